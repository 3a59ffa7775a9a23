"""Shared data, models and tolerances of the mixed-precision tests.

Tolerances are multiples of the compute dtype's machine epsilon ``EPS``
(float16 2**-10 = 9.8e-4, bfloat16 2**-7 = 7.8e-3), never of float32's. A
half-precision output differs from the float32 one with the same weights by
the rounding of the input and of the output (eps/2 each), by the rounding of
every evaluation of the dynamics or cell (eps/2 each, carried through a map of
Lipschitz constant about 1 over t in [0, 1] or through a contraction: about
eps), and by the solvers' stopping decisions, taken on float32 norms of
float32 states that differ by those roundings: about 2-3 eps in the worst
case, hence ``STATE_RTOL`` = 4 eps of the largest output (measured: at most
0.8 eps against float32 twins, 1.3 eps against exact solutions, bosh3 aside: 3.3 eps
at rtol = eps, its own global error). Gradients add the rounding of the cotangent and
of each vector-Jacobian product (eps/2 each): ``GRADIENT_RTOL`` = 8 eps, norm-wise
(measured: at most 1.3 eps).
"""

import keras
import numpy as np
import tensorflow as tf

import keras_implicit as ki

EPS = {"mixed_float16": 2.0**-10, "mixed_bfloat16": 2.0**-7}
COMPUTE = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
STATE_RTOL = 4
GRADIENT_RTOL = 8


def data(batch=16, features=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, features)).astype("float32")
    return x, np.tanh(x.sum(axis=1, keepdims=True)).astype("float32")


def under(policy, make):
    """``make()`` with ``policy`` as the global policy (restored after)."""
    saved = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        return make()
    finally:
        keras.mixed_precision.set_global_policy(saved)


def twin(make, policy):
    """``(float32 model, model under policy)`` with the same weights."""
    reference = under("float32", make)
    model = under(policy, make)
    model.set_weights(reference.get_weights())
    return reference, model


def output_and_gradients(model, x, loss_scale=1.0):
    """The model's output (float64 NumPy) and the gradients of ``mean(out**2) * loss_scale``
    divided by ``loss_scale`` (float64, flattened)."""
    with tf.GradientTape() as tape:
        out = tf.cast(model(x), tf.float32)
        loss = tf.reduce_mean(tf.square(out)) * loss_scale
    grads = tape.gradient(loss, model.trainable_variables)
    flat = np.concatenate([np.asarray(g, np.float64).ravel() for g in grads]) / loss_scale
    return np.asarray(out, np.float64), flat


def assert_close_in_eps(actual, expected, policy, multiple, what):
    """``|actual - expected| <= multiple * eps * max|expected|`` (norm-wise for vectors)."""
    scale = float(np.max(np.abs(expected)))
    error = float(np.max(np.abs(actual - expected)))
    bound = multiple * EPS[policy] * scale
    assert error <= bound, (f"{what} under {policy}: max error {error:.3g} > {multiple} eps x "
                            f"{scale:.3g} = {bound:.3g}")


def assert_norm_close_in_eps(actual, expected, policy, multiple, what):
    error = float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))
    bound = multiple * EPS[policy]
    assert error <= bound, f"{what} under {policy}: relative error {error:.3g} > {bound:.3g}"


def ode_model(solver="dopri5", gradient="adjoint", **kwargs):
    """Dense -> NeuralODE(ConcatDense tanh) -> Dense, on 4 features."""
    keras.utils.set_random_seed(0)
    if solver in ("rk4", "midpoint", "euler"):
        kwargs.setdefault("num_steps", 4)
    return keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(8),
        ki.layers.NeuralODE(ki.layers.ConcatDense(8, activation="tanh"), solver=solver,
                            gradient=gradient, name="ode", **kwargs),
        keras.layers.Dense(1)])


def deq_model(solver="anderson", **kwargs):
    """DEQ(DEQDenseCell) with a 8-feature state -> Dense, on 4 features."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((4,)),
        ki.layers.DEQ(ki.layers.DEQDenseCell(), state_shape=(8,), solver=solver, name="deq",
                      **kwargs),
        keras.layers.Dense(1)])
