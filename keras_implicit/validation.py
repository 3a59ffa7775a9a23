"""Argument checks shared by every part of the package (pure Python and NumPy).

Each check takes the argument's name and value, returns the value converted to
a plain Python type, and otherwise raises with a Keras-style message that names
the argument and the value received::

    positive_int("max_num_steps", 0)
    # ValueError: `max_num_steps` must be an int >= 1. Received: max_num_steps=0

Integers are bounded by ``MAX_INT32`` by default: step and iteration counts
are carried in int32 tensors, and a larger bound would silently wrap around.
"""

import math
import numbers

import numpy as np

MAX_INT32 = 2**31 - 1


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. Both a ``TypeError`` and a ``ValueError``:
    a string where a number belongs is a bad value as much as a bad type (NumPy's
    ``AxisError`` mixes its bases the same way)."""

    # AutoGraph re-raises an error from a traced function as its own type only for the
    # built-in types and those whose __init__ is Exception's; any other became a
    # StagingError, which is neither a TypeError nor a ValueError.
    __init__ = Exception.__init__


def _concrete_scalar(value):
    """A 0-d NumPy array or a scalar tensor with a value now (an eager tensor) as a NumPy
    scalar; anything else as it is. A variable stays as it is (and is refused): its value
    read here would not follow later assignments. A symbolic tensor (inside a
    ``tf.function``) has no value yet, and is refused too."""
    if getattr(value, "shape", None) != () or hasattr(value, "assign"):
        return value
    try:
        return np.asarray(value)[()]
    except Exception:  # a symbolic tensor: no value while tracing
        return value


def _refused(name, what, value):
    """The ``ArgumentTypeError`` for a ``value`` that is not ``what``; a tensor or variable
    is told what is taken instead."""
    hint = ""
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, np.generic):
        hint = (" (a Python or NumPy number, or a scalar tensor whose value is known now: "
                "not a variable, nor a tensor of a tf.function being traced)")
    return ArgumentTypeError(f"`{name}` must be {what}{hint}. Received: {name}={value!r}")


def _is_int(value):
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool)


def _is_number(value):
    kinds = (numbers.Real, np.integer, np.floating)
    return isinstance(value, kinds) and not isinstance(value, bool)


def check_int(name, value, minimum=None, maximum=MAX_INT32):
    """An int in ``[minimum, maximum]`` (bools are refused)."""
    number = _concrete_scalar(value)
    if not _is_int(number):
        raise _refused(name, f"an int{_range_text(minimum, None, int)}", value)
    value = number
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be an int{_range_text(minimum, None, int)}. "
                         f"Received: {name}={value!r}")
    if maximum is not None and value > maximum:
        bound = "2**31 - 1, the largest count an int32 holds" if maximum == MAX_INT32 else maximum
        raise ValueError(f"`{name}` must be at most {bound}. Received: {name}={value!r}")
    return int(value)


def positive_int(name, value, maximum=MAX_INT32):
    """An int ``>= 1`` (and ``<= maximum``)."""
    return check_int(name, value, minimum=1, maximum=maximum)


def check_float(name, value, minimum=None, maximum=None, *, exclusive_minimum=False,
                exclusive_maximum=False, allow_infinite=False):
    """A finite number (unless ``allow_infinite``) in the given range, as a float."""
    text = _range_text(minimum, maximum, float, exclusive_minimum, exclusive_maximum)
    kind = "a number" if allow_infinite else "a finite number"
    number = _concrete_scalar(value)
    if not _is_number(number):
        raise _refused(name, kind + text, value)
    value = float(number)
    bad = math.isnan(value) or (not allow_infinite and math.isinf(value))
    if minimum is not None:
        bad = bad or (value <= minimum if exclusive_minimum else value < minimum)
    if maximum is not None:
        bad = bad or (value >= maximum if exclusive_maximum else value > maximum)
    if bad:
        raise ValueError(f"`{name}` must be {kind}{text}. Received: {name}={value!r}")
    return value


def positive_float(name, value):
    """A finite number ``> 0``."""
    return check_float(name, value, 0.0, exclusive_minimum=True)


def nonnegative_float(name, value):
    """A finite number ``>= 0``."""
    return check_float(name, value, 0.0)


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return bool(value)


def one_of(name, value, choices):
    """``value`` if it is one of ``choices`` (compared with ``==``)."""
    if not isinstance(value, (str, bool, numbers.Number, type(None))) or value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}. Received: {name}={value!r}")
    return value


def known_name(kind, name, value, names):
    """``value`` if it is one of ``names``; else a ``ValueError`` that lists them:
    ``Unknown {kind}. Valid names: [...]. Received: {name}=...`` (the words of every
    registry of named things)."""
    if not isinstance(value, str) or value not in names:
        raise ValueError(f"Unknown {kind}. Valid names: {list(names)}. "
                         f"Received: {name}={value!r}")
    return value


def optional(check, name, value, *args, **kwargs):
    """``None`` or ``check(name, value, ...)``."""
    return None if value is None else check(name, value, *args, **kwargs)


def check_shape(name, value, allow_empty=False):
    """A tuple of positive ints (a shape without the batch axis)."""
    try:
        shape = tuple(value)
        valid = all(_is_int(d) and d >= 1 for d in shape) and (allow_empty or bool(shape))
    except TypeError:
        valid = False
    if not valid:
        raise ValueError(f"`{name}` must be a {'' if allow_empty else 'non-empty '}tuple of "
                         f"positive ints. Received: {name}={value!r}")
    return tuple(int(d) for d in shape)


def _range_text(minimum, maximum, kind, exclusive_minimum=False, exclusive_maximum=False):
    def show(x):
        return str(int(x)) if kind is int else f"{x:g}"

    if minimum is not None and maximum is not None:
        left = "(" if exclusive_minimum else "["
        right = ")" if exclusive_maximum else "]"
        return f" in {left}{show(minimum)}, {show(maximum)}{right}"
    if minimum is not None:
        return f" {'>' if exclusive_minimum else '>='} {show(minimum)}"
    if maximum is not None:
        return f" {'<' if exclusive_maximum else '<='} {show(maximum)}"
    return ""
