"""Solvers by name: ``get("dopri5" | {"name": ..., **options} | instance)``.

``Registry`` is shared by the ODE solvers (here) and the fixed-point solvers
(``fixed_point_registry``): a name, a config dict or an instance in, an
instance out, with errors that list the valid names.
"""

from keras_implicit.solvers import base
from keras_implicit.solvers import runge_kutta
from keras_implicit.solvers.adaptive import AdaptiveRungeKutta
from keras_implicit.solvers.fixed_grid import FixedGridRungeKutta


class Registry:
    """Named factories of one kind of solver.

    Args:
        kind: what the solvers are, for messages ("ODE solver").
        base_class: instances of it are returned as they are.
        factories: ``{name: callable(**options) -> instance}``.
    """

    def __init__(self, kind, base_class, factories):
        self.kind = kind
        self.base_class = base_class
        self.factories = factories

    def get(self, identifier, argument="solver"):
        """Returns a solver instance.

        Args:
            identifier: a registered name, a dict ``{"name": name, **options}``
                (what ``solver.get_config()`` returns) or an instance.
            argument: the argument name used in error messages.

        Raises:
            ValueError: unknown name (the message lists the valid ones) or options.
            TypeError: anything else.
        """
        if isinstance(identifier, self.base_class):
            return identifier
        if isinstance(identifier, str):
            name, options = identifier, {}
        elif isinstance(identifier, dict):
            if "name" not in identifier:
                raise ValueError(f"A solver given as a dict needs a 'name' key. "
                                 f"Received: {argument}={identifier!r}")
            options = dict(identifier)
            name = options.pop("name")
        else:
            raise TypeError(
                f"`{argument}` must be a {self.kind} name, a config dict or a "
                f"{self.base_class.__name__}. Received: {argument}={identifier!r} of type "
                f"{type(identifier).__name__}")
        if name not in self.factories:
            raise ValueError(f"Unknown {self.kind}. Valid names: {sorted(self.factories)}. "
                             f"Received: {argument}={name!r}")
        try:
            return self.factories[name](**options)
        except TypeError as error:
            raise ValueError(f"Invalid options for the solver {name!r}: {error}. "
                             f"Received: {argument}={identifier!r}") from None

    def serialize(self, solver):
        """A solver as its name (default options) or its config dict."""
        config = solver.get_config()
        return config["name"] if config == self.get(config["name"]).get_config() else config


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

_ODE_REGISTRY = Registry("ODE solver", base.ODESolver, ODE_SOLVERS)
get = _ODE_REGISTRY.get
serialize = _ODE_REGISTRY.serialize
