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

    def solve(self, fn, z0, *, tol=1e-4, max_iter=50, stop_mode="rel"):
        tol, max_iter, stop_mode = base.check_solve_arguments(tol, max_iter, stop_mode)
        damping = self.damping

        def step(state, z, fz):
            z_next = fz if damping == 1.0 else z + damping * (fz - z)
            return state, z_next, fn(z_next)

        return base.iterate(fn, z0, step, (), tol=tol, max_iter=max_iter, stop_mode=stop_mode)

    def get_config(self):
        return {"damping": self.damping}
