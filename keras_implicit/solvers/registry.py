"""Solvers by name: ``get("dopri5" | {"name": ..., **options} | instance)``."""

from keras_implicit.solvers import base
from keras_implicit.solvers import runge_kutta
from keras_implicit.solvers.adaptive import AdaptiveRungeKutta
from keras_implicit.solvers.fixed_grid import FixedGridRungeKutta


def _tfp_solver(method):
    def make(**options):
        from keras_implicit.solvers.tfp import TFPSolver

        return TFPSolver(method, **options)

    return make


ODE_SOLVERS = {
    "euler": lambda: FixedGridRungeKutta(runge_kutta.EULER),
    "midpoint": lambda: FixedGridRungeKutta(runge_kutta.MIDPOINT),
    "rk4": lambda: FixedGridRungeKutta(runge_kutta.RK4),
    "bosh3": lambda **kw: AdaptiveRungeKutta(runge_kutta.BOGACKI_SHAMPINE, **kw),
    "dopri5": lambda **kw: AdaptiveRungeKutta(runge_kutta.DORMAND_PRINCE, **kw),
    "tfp_dopri5": _tfp_solver("dormand_prince"),
    "bdf": _tfp_solver("bdf"),
}


def get(identifier, argument="solver"):
    """Returns an ODE solver instance.

    Args:
        identifier: a name from ``ODE_SOLVERS``, a dict ``{"name": name,
            **options}`` (what ``solver.get_config()`` returns), or an
            ``ODESolver`` instance (returned as is).
        argument: the argument name used in error messages.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or options.
        TypeError: anything else.
    """
    if isinstance(identifier, base.ODESolver):
        return identifier
    if isinstance(identifier, str):
        name, options = identifier, {}
    elif isinstance(identifier, dict):
        if "name" not in identifier:
            raise ValueError(
                f"A solver given as a dict needs a 'name' key. Received: {argument}={identifier!r}")
        options = dict(identifier)
        name = options.pop("name")
    else:
        raise TypeError(
            f"`{argument}` must be a solver name, a config dict or an ODESolver. "
            f"Received: {argument}={identifier!r} of type {type(identifier).__name__}"
        )
    if name not in ODE_SOLVERS:
        raise ValueError(
            f"Unknown ODE solver. Valid names: {sorted(ODE_SOLVERS)}. "
            f"Received: {argument}={name!r}"
        )
    try:
        return ODE_SOLVERS[name](**options)
    except TypeError as error:
        raise ValueError(
            f"Invalid options for the solver {name!r}: {error}. Received: {argument}={identifier!r}"
        ) from None


def serialize(solver):
    """A solver as a string (default options) or a config dict."""
    config = solver.get_config()
    default = get(config["name"]).get_config()
    return config["name"] if config == default else config
