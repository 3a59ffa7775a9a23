"""How ``odeint`` differentiates a solve: strategy objects chosen per call.

``"adjoint"`` / :class:`Adjoint`: the continuous adjoint (Chen et al. 2018,
eqs. 4–5), solved backwards in time with memory independent of the number of
steps. ``"backprop"`` / :class:`Backprop`: differentiate through the solver's
own operations (the exact gradient of the discretisation; memory grows with
the number of steps).
"""


class Adjoint:
    """Continuous adjoint sensitivities.

    Args:
        rtol, atol: tolerances of the backward solve; ``None`` uses the forward ones.
        seminorm: leave the parameter adjoints out of the backward solve's
            error norm (Kidger, Chen & Lyons 2021, "Hey, that's not an ODE").
            They are integrals of the other components, so controlling their
            error only costs steps; solvers without error masks (the TFP
            adapters) ignore this.
        solver: solver of the backward solve; ``None`` uses the forward solver.
        max_num_steps: bound of the backward solve; ``None`` uses the forward one.
        normalize: solve for the cotangent divided by its RMS (the adjoint
            equations are linear), so that ``rtol``/``atol`` bound its error
            relative to its size. Without it the error control depends on the
            loss's scale: a mean over a large batch gives cotangents far below
            ``atol``, which then control nothing (as in torchdiffeq). Off by
            default: on the MNIST ODE block it cuts the gradient's error from
            5.7% to 1.7% but takes 3-7x more backward evaluations, and training
            the ODE-Net did not improve (README, "Gradients").

    Example:
        >>> ki.ops.odeint(fn, y0, t, gradient=ki.ops.Adjoint(rtol=1e-5, atol=1e-5))
    """

    name = "adjoint"

    def __init__(self, rtol=None, atol=None, seminorm=True, solver=None, max_num_steps=None,
                 normalize=False):
        for label, value in (("rtol", rtol), ("atol", atol)):
            if value is not None and not value > 0:
                raise ValueError(f"`{label}` must be > 0. Received: {label}={value}")
        if max_num_steps is not None and (not isinstance(max_num_steps, int) or max_num_steps < 1):
            raise ValueError(
                f"`max_num_steps` must be an int >= 1. Received: max_num_steps={max_num_steps!r}")
        self.rtol = rtol
        self.atol = atol
        self.seminorm = bool(seminorm)
        self.solver = solver
        self.max_num_steps = max_num_steps
        self.normalize = bool(normalize)

    def get_config(self):
        from keras_implicit.solvers import registry

        solver = self.solver
        if solver is not None:
            solver = registry.serialize(registry.get(solver))
        return {"name": self.name, "rtol": self.rtol, "atol": self.atol,
                "seminorm": self.seminorm, "solver": solver, "max_num_steps": self.max_num_steps,
                "normalize": self.normalize}

    def __repr__(self):
        return f"Adjoint({self.get_config()})"


class Backprop:
    """Backpropagation through the solver's operations (needs a differentiable solver)."""

    name = "backprop"

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        return "Backprop()"


_STRATEGIES = {"adjoint": Adjoint, "backprop": Backprop}


def get(identifier, argument="gradient"):
    """``"adjoint"``, ``"backprop"``, a config dict or a strategy instance -> instance."""
    if isinstance(identifier, (Adjoint, Backprop)):
        return identifier
    if isinstance(identifier, str):
        name, options = identifier, {}
    elif isinstance(identifier, dict) and "name" in identifier:
        options = dict(identifier)
        name = options.pop("name")
    else:
        raise TypeError(
            f"`{argument}` must be 'adjoint', 'backprop', an Adjoint/Backprop instance or "
            f"their config dict. Received: {argument}={identifier!r}"
        )
    if name not in _STRATEGIES:
        raise ValueError(
            f"Unknown gradient strategy. Valid names: {sorted(_STRATEGIES)}. "
            f"Received: {argument}={name!r}"
        )
    return _STRATEGIES[name](**options)


def serialize(strategy):
    """A strategy as its name (default options) or its config dict."""
    config = strategy.get_config()
    return strategy.name if config == get(strategy.name).get_config() else config
