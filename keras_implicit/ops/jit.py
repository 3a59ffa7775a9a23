"""Compiling a solver's right-hand side with XLA while the solver loop stays in TensorFlow.

XLA fuses the many small ops of a typical Keras dynamics or cell (GroupNorm,
concatenations, activations) into a few kernels; the solver loop itself, with its
data-dependent step count, stays in TensorFlow's graph (compiled whole, the ODE
block's training step is 4.7x slower on CPU; see the README).
"""

import tensorflow as tf

from keras_implicit import validation


def maybe_jit(fn, jit):
    """``fn`` compiled with XLA (a ``tf.function``) when ``jit``, else ``fn`` itself."""
    return tf.function(fn, jit_compile=True, autograph=False) if jit else fn


def check_jit_flag(name, value):
    """``value`` if it is a bool, else a ``TypeError`` naming ``name``."""
    return validation.check_bool(name, value)


def check_jit_dynamics(jit_dynamics, solver):
    """Validates ``jit_dynamics`` for ``solver`` (TFP's solvers refuse ``True``)."""
    jit_dynamics = check_jit_flag("jit_dynamics", jit_dynamics)
    if jit_dynamics and not solver.differentiable:
        # TFP's BDF differentiates the dynamics itself (its Newton Jacobian), which
        # re-enters the compiled function per column: minutes instead of seconds.
        raise ValueError(
            f"`jit_dynamics=True` works with the solvers 'dopri5', 'bosh3', 'rk4', "
            f"'midpoint' and 'euler', not with TFP's. Received: jit_dynamics=True, "
            f"solver={solver.name!r}")
    return jit_dynamics


def ode_wrappers(jit_dynamics):
    """``(dynamics_wrapper, step_fn_wrapper, compiled)`` for ``odeint``'s compile option."""
    if jit_dynamics:
        return (lambda fn: maybe_jit(fn, True)), None, "dynamics"
    return None, None, "none"
