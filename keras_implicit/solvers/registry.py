"""One registry mechanism for every kind of pluggable object, by name.

Each kind (ODE solvers, fixed-point solvers, step-size controllers, the two
families of gradient strategies) has one :class:`Registry`, defined beside its
base class. ``get`` turns what a user or a config holds into an instance:

- an instance of the base class, returned as it is;
- a registered name, ``"dopri5"``: the default instance;
- a short config dict ``{"name": "dopri5", **options}`` (the format of
  keras_implicit 0.1.0 configs, still accepted);
- a Keras config dict (``{"class_name": ..., "config": ..., ...}``, what
  ``keras.saving.serialize_keras_object`` writes), handed to
  ``keras_implicit.serialization``, the one Keras-side module.

This module is pure Python: registering a class here also registers it with
Keras through the listener that ``keras_implicit.serialization`` installs.
"""

from keras_implicit import validation


class Configured:
    """A pluggable object defined by its constructor arguments (``get_config``).

    The base of every kind a :class:`Registry` holds: ``from_config`` rebuilds it,
    two objects of the same class with equal configs are equal (and hash alike),
    and ``repr`` shows the config as constructor arguments.
    """

    def get_config(self):
        """The constructor arguments, for ``from_config`` (Keras serialization)."""
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        # Sorted by key: equal configs hash alike whatever the order of their keys.
        return hash((type(self).__name__, repr(sorted(self.get_config().items()))))

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({options})"


def qualified_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def same_class(a, b):
    """Whether ``a`` and ``b`` are one class, or the same definition run again (a module
    reloaded, a notebook cell re-run): ``False`` for two different classes."""
    return a is b or qualified_name(a) == qualified_name(b)


class Registry:
    """Named factories of one kind of object.

    Args:
        kind: what the objects are, for messages (``"ODE solver"``).
        base_class: instances of it pass through ``get``.
        argument: the usual argument name, for messages (``"solver"``).
    """

    #: Called as ``listener(registry, cls)`` for every class registered (in any registry).
    listeners = []
    #: Every registry, by kind.
    all = {}

    def __init__(self, kind, base_class, argument):
        self.kind = kind
        self.base_class = base_class
        self.argument = argument
        self._factories = {}
        self._owners = {}  # name -> the class registered under it
        self.classes = []
        Registry.all[kind] = self

    def register(self, name=None, factory=None):
        """Registers a class (decorator) under ``name``.

        ``name`` defaults to the class's ``name`` attribute. ``factory``
        (``**options -> instance``) builds the named default; by default the
        class itself. Returns the class unchanged.

        Example:
            >>> @ki.solvers.register("my_euler")
            ... class MyEuler(ki.solvers.ODESolver): ...
        """

        def decorator(cls):
            if not (isinstance(cls, type) and issubclass(cls, self.base_class)):
                raise TypeError(f"Only subclasses of {self.base_class.__name__} can be registered "
                                f"as a {self.kind}. Received: {cls!r}")
            key = name if name is not None else getattr(cls, "name", None)
            if not isinstance(key, str) or not key:
                raise ValueError(f"A registered {self.kind} needs a name (pass `name=` or set the "
                                 f"class attribute `name`). Received: name={key!r}")
            owner = self._owners.get(key)
            if owner is not None and not same_class(owner, cls):
                # It replaced the other class silently, in saved models' configs too.
                raise ValueError(
                    f"The {self.kind} name {key!r} is taken by {qualified_name(owner)}: "
                    f"register {qualified_name(cls)} under another name. Received: "
                    f"name={key!r}")
            if cls not in self.classes:
                for listener in Registry.listeners:
                    listener(self, cls)
                self.classes.append(cls)
            self._factories[key] = cls if factory is None else factory
            self._owners[key] = cls
            return cls

        return decorator

    def add(self, name, factory, cls):
        """Registers a named factory of instances of the registered class ``cls``."""
        self.register(name, factory)(cls)

    def names(self):
        return sorted(self._factories)

    def __iter__(self):
        return iter(self.names())

    def __contains__(self, name):
        return name in self._factories

    def __len__(self):
        return len(self._factories)

    def __repr__(self):
        return f"Registry({self.kind!r}, names={self.names()})"

    def get(self, identifier, argument=None):
        """An instance from an instance, a name or a config dict.

        Raises:
            ValueError: an unknown name (the message lists the valid ones) or
                invalid options.
            TypeError: anything else.
        """
        argument = argument or self.argument
        if isinstance(identifier, self.base_class):
            return identifier
        if isinstance(identifier, dict) and "class_name" in identifier:
            from keras_implicit import serialization  # the Keras side (see the module docstring)

            instance = serialization.deserialize_keras_config(identifier, argument)
            if not isinstance(instance, self.base_class):
                raise TypeError(f"`{argument}` must describe a {self.base_class.__name__}. "
                                f"Received: {argument}={identifier!r}")
            return instance
        if isinstance(identifier, str):
            name, options = identifier, {}
        elif isinstance(identifier, dict):
            if "name" not in identifier:
                raise ValueError(f"A {self.kind} given as a dict needs a 'name' key. "
                                 f"Received: {argument}={identifier!r}")
            options = dict(identifier)
            name = options.pop("name")
        else:
            raise TypeError(
                f"`{argument}` must be a {self.kind} name, a config dict or a "
                f"{self.base_class.__name__}. Received: {argument}={identifier!r} of type "
                f"{type(identifier).__name__}")
        validation.known_name(self.kind, argument, name, self.names())
        try:
            return self._factories[name](**options)
        except TypeError as error:
            raise ValueError(f"Invalid options for the {self.kind} {name!r}: {error}. "
                             f"Received: {argument}={identifier!r}") from None

    def serialize(self, instance, short=True):
        """``instance`` as its registered name if it is that name's default (and ``short``),
        else as a Keras config dict (written by ``keras_implicit.serialization``, the Keras
        side)."""
        name = self.short_name(instance) if short else None
        if name is not None:
            return name
        from keras_implicit import serialization

        return serialization.serialize_keras(instance)

    def short_name(self, instance):
        """The registered name whose default instance equals ``instance``, else ``None``.

        Equal means the same class and the same full config (a custom
        Butcher tableau that happens to be named ``"dopri5"`` is not Dormand–Prince).
        """
        name = getattr(instance, "name", None)
        factory = self._factories.get(name) if isinstance(name, str) else None
        if factory is None:
            return None
        try:
            default = factory()
        except (TypeError, ValueError):
            return None
        same = type(default) is type(instance) and default.get_config() == instance.get_config()
        return name if same else None
