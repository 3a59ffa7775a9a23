"""Picard iteration: ``z <- (1 - damping) z + damping fn(z)``."""

from keras_implicit.solvers import fixed_point_base as base


@base.FIXED_POINT_SOLVERS.register("picard")
class Picard(base.FixedPointSolver):
    """Damped fixed-point (Picard / Krasnosel'skii–Mann) iteration.

    Converges linearly for a contraction, at the rate of its Lipschitz
    constant; damping < 1 helps maps whose Jacobian has eigenvalues near -1.

    Args:
        damping: step ``damping`` in (0, 1]; 1 is the plain iteration
            ``z <- fn(z)``.

    Example:
        >>> z, stats = Picard(damping=0.8).solve(fn, z0, tol=1e-6, max_iter=100)
    """

    name = "picard"

    def __init__(self, damping=1.0):
        self.damping = base.check_damping(damping)

    def init_state(self, z0):
        return ()

    def update(self, state, z, fz):
        damping = self.damping
        return state, (fz if damping == 1.0 else z + damping * (fz - z))

    def get_config(self):
        return {"damping": self.damping}
