"""Warnings attributed to the user's code (pure Python).

``warn(message, category)`` is ``warnings.warn`` with the warning's location set to
the first caller outside keras_implicit, Keras and TensorFlow (and AutoGraph's
generated copies of a traced function): the line of the user's own ``odeint(...)``,
``model(x)`` or ``model.fit(...)``, however deep in the library the warning arises
and whether the call is eager or traced. A fixed ``stacklevel`` pointed into the
package instead, so Python's default filter, which shows a warning once per
location, hid it for every later model, and hid ``DeprecationWarning`` (shown by
default only when attributed to ``__main__``) altogether.
"""

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_LIBRARIES = ("keras", "tensorflow", "tf_keras")


def _library_prefixes():
    prefixes = [_PACKAGE]
    for name in _LIBRARIES:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            prefixes.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    return tuple(prefixes)


def _is_library(filename, prefixes):
    return (filename.startswith(prefixes)
            or os.path.basename(filename).startswith("__autograph_generated_file"))


def warn(message, category=UserWarning):
    """``warnings.warn(message, category)`` at the user's call (the module docstring)."""
    prefixes = _library_prefixes()
    frame, level = sys._getframe(1), 2
    while frame is not None and _is_library(os.path.abspath(frame.f_code.co_filename),
                                            prefixes):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)
