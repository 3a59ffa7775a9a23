"""Fixed-point solvers by name: ``get("anderson" | {"name": ..., **options} | instance)``."""

from keras_implicit.solvers import fixed_point_base as base
from keras_implicit.solvers.anderson import Anderson
from keras_implicit.solvers.broyden import Broyden
from keras_implicit.solvers.picard import Picard

FIXED_POINT_SOLVERS = {
    "anderson": Anderson,
    "broyden": Broyden,
    "picard": Picard,
}


def get(identifier, argument="solver"):
    """Returns a fixed-point solver instance.

    Args:
        identifier: a name from ``FIXED_POINT_SOLVERS``, a dict ``{"name":
            name, **options}`` (what ``solver.get_config()`` returns), or a
            ``FixedPointSolver`` instance (returned as is).
        argument: the argument name used in error messages.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or options.
        TypeError: anything else.
    """
    if isinstance(identifier, base.FixedPointSolver):
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
            f"`{argument}` must be a fixed-point solver name, a config dict or a "
            f"FixedPointSolver. Received: {argument}={identifier!r} of type "
            f"{type(identifier).__name__}"
        )
    if name not in FIXED_POINT_SOLVERS:
        raise ValueError(
            f"Unknown fixed-point solver. Valid names: {sorted(FIXED_POINT_SOLVERS)}. "
            f"Received: {argument}={name!r}"
        )
    try:
        return FIXED_POINT_SOLVERS[name](**options)
    except TypeError as error:
        raise ValueError(
            f"Invalid options for the solver {name!r}: {error}. Received: {argument}={identifier!r}"
        ) from None


def serialize(solver):
    """A solver as its name (default options) or its config dict."""
    config = solver.get_config()
    return config["name"] if config == get(config["name"]).get_config() else config
