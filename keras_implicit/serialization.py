"""Keras serialization of every pluggable object: solvers, controllers, gradient strategies.

The one Keras-side piece of the registry mechanism (``solvers.registry`` is
pure Python). Every class registered in a kind's registry is also registered
with ``keras.saving.register_keras_serializable`` (package ``"keras_implicit"``
for ours, ``"Custom"`` for a user's class not yet known to Keras), so configs
round-trip through ``.keras`` files in safe mode with Keras's own
``serialize_keras_object`` / ``deserialize_keras_object``. An object that is
its registered name's default is written as the plain name, so configs stay
short.

Kinds: ``"ode_solver"``, ``"fixed_point_solver"``, ``"step_controller"``,
``"ode_gradient"``, ``"fixed_point_gradient"``.

Example:
    >>> config = ki.serialization.serialize(ki.solvers.AdaptiveRungeKutta(my_tableau))
    >>> solver = ki.serialization.deserialize(config, "ode_solver")
"""

import keras

from keras_implicit.ops.fixed_point_gradients import FIXED_POINT_GRADIENTS
from keras_implicit.ops.ode_gradients import ODE_GRADIENTS
from keras_implicit.solvers.base import ODE_SOLVERS
from keras_implicit.solvers.fixed_point_base import FIXED_POINT_SOLVERS
from keras_implicit.solvers.registry import Registry, qualified_name, same_class
from keras_implicit.solvers.step_control import STEP_CONTROLLERS

KINDS = {
    "ode_solver": ODE_SOLVERS,
    "fixed_point_solver": FIXED_POINT_SOLVERS,
    "step_controller": STEP_CONTROLLERS,
    "ode_gradient": ODE_GRADIENTS,
    "fixed_point_gradient": FIXED_POINT_GRADIENTS,
}


def _known_to_keras(cls):
    name = keras.saving.get_registered_name(cls)
    return keras.saving.get_registered_object(name) is cls


def _register_with_keras(registry, cls):
    if _known_to_keras(cls):
        return
    package = "keras_implicit" if cls.__module__.startswith("keras_implicit.") else "Custom"
    existing = keras.saving.get_registered_object(f"{package}>{cls.__name__}")
    if isinstance(existing, type) and not same_class(existing, cls):
        # Keras would replace it: models saved with the other class would load this one.
        raise ValueError(
            f"Keras knows another class as '{package}>{cls.__name__}' "
            f"({qualified_name(existing)}): give {qualified_name(cls)} another class name.")
    keras.saving.register_keras_serializable(package=package, name=cls.__name__)(cls)


Registry.listeners.append(_register_with_keras)
for _registry in KINDS.values():
    for _cls in _registry.classes:
        _register_with_keras(_registry, _cls)


def _registry(kind):
    if kind not in KINDS:
        raise ValueError(f"Unknown kind. Valid kinds: {sorted(KINDS)}. Received: kind={kind!r}")
    return KINDS[kind]


def register(kind, name=None):
    """Registers a class of ``kind`` under ``name`` (usable by name, saveable in ``.keras``).

    Example:
        >>> @ki.serialization.register("fixed_point_solver", "my_picard")
        ... class MyPicard(ki.solvers.FixedPointSolver): ...
    """
    return _registry(kind).register(name)


def get(kind, identifier, argument=None):
    """An instance of ``kind`` from a name, a config dict (ours or Keras's) or an instance."""
    return _registry(kind).get(identifier, argument)


def deserialize(config, kind):
    """The inverse of ``serialize``: ``get`` by kind."""
    return get(kind, config)


def serialize(obj):
    """A registered object as its name (default options) or its Keras config dict.

    Never raises for an object with a ``get_config``: a class unknown to the
    registries is written by ``keras.saving.serialize_keras_object`` (loading
    it later needs the class registered with Keras).
    """
    for registry in KINDS.values():
        if isinstance(obj, registry.base_class):
            return registry.serialize(obj)
    return serialize_keras(obj)


def serialize_keras(obj):
    return keras.saving.serialize_keras_object(obj)


def deserialize_keras_config(config, argument):
    """``keras.saving.deserialize_keras_object`` with an error naming the argument."""
    try:
        return keras.saving.deserialize_keras_object(config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"Cannot rebuild `{argument}` from its config: {error} "
                         f"Received: {argument}={config!r}") from None
