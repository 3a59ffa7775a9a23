"""Process-wide settings of keras_implicit (as ``keras.config`` is Keras's).

- ``disable_auto_jit()`` / ``enable_auto_jit()`` / ``is_auto_jit_enabled()``:
  whether ``jit_dynamics="auto"`` and ``jit_cell="auto"`` may compile with XLA
  (``ki.ops.jit.plan_ode`` and ``plan_fixed_point`` state the rule). Turned
  off, every ``"auto"`` solve runs in TensorFlow's graph: no compilation at
  the first call (a test suite, debugging with ``tf.print``).

Example:
    >>> ki.config.disable_auto_jit()  # functions traced from now on
    >>> ki.config.is_auto_jit_enabled()
    False
"""

from keras_implicit.ops.jit import disable_auto_jit
from keras_implicit.ops.jit import enable_auto_jit
from keras_implicit.ops.jit import is_auto_jit_enabled

__all__ = ["disable_auto_jit", "enable_auto_jit", "is_auto_jit_enabled"]
