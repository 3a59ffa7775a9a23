"""mixed_float16's LossScaleOptimizer with the adjoint and implicit backward passes.

The loss scale multiplies the cotangent that enters every backward solve. A
cotangent that overflows float16 (before or during the backward solve) must give
non-finite gradients, not an error, so that the optimizer skips the step and
halves the scale; only a failed forward solve raises. A finite scale must not
change what the backward solves do: the gradients over the scale equal the
unscaled ones and the backward solves take the same number of steps.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
import precision_cases as pc

# Each case: a layer factory under mixed_float16, on_failure="raise" throughout, so that an
# error anywhere in the backward pass would fail the test.
LAYERS = {
    "ode-adjoint": lambda: ki.layers.NeuralODE(
        ki.layers.ConcatDense(8, activation="tanh"), jit_dynamics=False, name="layer"),
    "ode-adjoint-unnormalized": lambda: ki.layers.NeuralODE(
        ki.layers.ConcatDense(8, activation="tanh"), gradient=ki.ops.Adjoint(normalize=False),
        jit_dynamics=False, name="layer"),
    "ode-checkpointed": lambda: ki.layers.NeuralODE(
        ki.layers.ConcatDense(8, activation="tanh"), gradient="checkpointed",
        jit_dynamics=False, name="layer"),
    # tol=2e-3: above float16's epsilon, so no floor warning (test_tolerance_floor has those).
    "deq-implicit": lambda: ki.layers.DEQ(ki.layers.DEQDenseCell(), tol=2e-3,
                                          on_failure="raise", name="layer"),
    "deq-implicit-abs": lambda: ki.layers.DEQ(ki.layers.DEQDenseCell(), stop_mode="abs",
                                              tol=2e-3, on_failure="raise", name="layer"),
    "deq-phantom": lambda: ki.layers.DEQ(ki.layers.DEQDenseCell(), gradient="phantom",
                                         tol=2e-3, on_failure="raise", name="layer"),
}


def _model(case):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), LAYERS[case](),
                             keras.layers.Dense(1)])


def _scaled_gradients(model, x, scale):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(tf.cast(model(x), tf.float32))) * scale
    return [np.asarray(g, np.float64) for g in tape.gradient(loss, model.trainable_variables)]


@pytest.fixture
def float16():
    keras.mixed_precision.set_global_policy("mixed_float16")


@pytest.mark.parametrize("case", list(LAYERS))
def test_an_overflowing_cotangent_gives_non_finite_gradients(float16, case):
    x, _ = pc.data()
    model = _model(case)
    # 2**40: the cotangent of the float16 output is inf (above 65504) before any solve.
    grads = _scaled_gradients(model, x, 2.0**40)
    assert not all(np.all(np.isfinite(g)) for g in grads)
    # The same model without the overflow: finite gradients (the failure was the scale's).
    assert all(np.all(np.isfinite(g)) for g in _scaled_gradients(model, x, 1.0))


def _float16_state(values):
    return tf.constant(values, tf.float16)


def test_an_adjoint_that_overflows_mid_solve_gives_nan_gradients_not_an_error():
    """A finite float16 cotangent whose adjoint grows past 65504 during the backward solve
    (dy/dt = 3wy: a(0) = e^3 a(1)); on_failure="raise" would raise for any other failure."""
    w = tf.Variable(1.0)
    y0 = _float16_state(np.ones((4, 3)))

    def grads(scale, gradient):
        with tf.GradientTape() as tape:
            y = ki.ops.odeint(lambda t, y: tf.cast(3 * w, tf.float16) * y, y0, [0.0, 1.0],
                              gradient=gradient, jit_dynamics=False).states[-1]
            loss = tf.reduce_sum(tf.cast(y, tf.float32)) * scale
        return tape.gradient(loss, w)

    overflowed = grads(1e4, ki.ops.Adjoint(normalize=False))
    assert np.isnan(float(overflowed))
    # dL/dw = scale * sum(3 t y(t) dt ...) = scale * 12 * 3 e^3 exactly for y0 = 1 (12 entries).
    exact = 12 * 3 * np.exp(3.0)
    for gradient in (ki.ops.Adjoint(normalize=True), ki.ops.Adjoint(normalize=False)):
        np.testing.assert_allclose(float(grads(1.0, gradient)), exact, rtol=8 * pc.EPS[
            "mixed_float16"])
    # Normalized, the same scale neither overflows nor changes the gradient over the scale.
    np.testing.assert_allclose(float(grads(1e4, ki.ops.Adjoint(normalize=True))) / 1e4, exact,
                               rtol=8 * pc.EPS["mixed_float16"])


def test_an_implicit_backward_solve_is_normalized_under_float16():
    """z = w z + x with w = 0.95, x = 1: z* = 20 and g = scale / 0.05, beyond float16's
    range for scale = 2**15; solved for the cotangent over its RMS, the float32 variable's
    gradient dL/dw = sum(g z*) = 12 x 400 x scale is right in both stop modes (whose
    absolute tolerance would otherwise be 2**15 times tighter)."""
    w = tf.Variable(0.95)
    x = _float16_state(np.ones((4, 3)))
    exact = 12 * 20.0 * 20.0

    def grads(scale, stop_mode):
        with tf.GradientTape() as tape:
            z = ki.ops.fixed_point(lambda z, x: tf.cast(w, tf.float16) * z + x, x,
                                   tf.zeros_like(x), tol=1e-3, stop_mode=stop_mode,
                                   max_iter=200, on_failure="raise").z
            loss = tf.reduce_sum(tf.cast(z, tf.float32)) * scale
        return float(tape.gradient(loss, w)) / scale

    for stop_mode in ("rel", "abs"):
        for scale in (1.0, 2.0**15):
            np.testing.assert_allclose(grads(scale, stop_mode), exact, rtol=0.02)


@pytest.mark.parametrize("case", ["ode-adjoint", "deq-implicit", "deq-implicit-abs"])
def test_the_loss_scale_does_not_fool_the_backward_tolerances(float16, case):
    """Gradients over the scale equal the unscaled ones (to float16's rounding), and the
    backward solve takes the same steps or iterations (a power-of-two scale is exact)."""
    x, _ = pc.data()
    model = _model(case)
    layer = model.get_layer("layer")
    stat = "nfe_backward" if case.startswith("ode") else "iterations_backward"
    reference = _scaled_gradients(model, x, 1.0)
    reference_count = int(layer.solver_stats()[stat])
    scaled = _scaled_gradients(model, x, 2.0**10)
    assert int(layer.solver_stats()[stat]) == reference_count > 0
    flat = np.concatenate([g.ravel() for g in scaled]) / 2.0**10
    expected = np.concatenate([g.ravel() for g in reference])
    pc.assert_norm_close_in_eps(flat, expected, "mixed_float16", pc.GRADIENT_RTOL,
                                f"{case} gradient over the loss scale")


def test_an_adjoint_instance_is_used_as_given(float16):
    """The name "adjoint" is normalized under float16; Adjoint(...) instances are not (what
    the layer hands odeint), and the config keeps what was given."""
    by_name, unnormalized = (_model(case).get_layer("layer")
                             for case in ("ode-adjoint", "ode-adjoint-unnormalized"))
    assert by_name._solve_kwargs["gradient"] == ki.ops.Adjoint(normalize=True)
    assert unnormalized._solve_kwargs["gradient"] == ki.ops.Adjoint(normalize=False)
    assert by_name.get_config()["gradient"] == "adjoint"
    clone = ki.layers.NeuralODE.from_config(by_name.get_config())
    assert clone._solve_kwargs["gradient"] == ki.ops.Adjoint(normalize=True)
    # The opt-out Adjoint(normalize=False) equals Adjoint(), whose name the config used to
    # write: the clone and a reloaded model then solved normalized.
    config = unnormalized.get_config()
    assert config["gradient"]["config"]["normalize"] is False
    clone = ki.layers.NeuralODE.from_config(config)
    assert clone._solve_kwargs["gradient"] == ki.ops.Adjoint(normalize=False)
    assert clone.get_config()["gradient"] == config["gradient"]


@pytest.mark.parametrize("case", ["ode-adjoint", "deq-implicit"])
def test_fit_skips_overflowing_steps_and_lowers_the_scale(float16, case):
    """Keras's LossScaleOptimizer from a scale that overflows: the first steps change
    nothing and halve the scale, then training proceeds; no error on the way."""
    x, y = pc.data(batch=32)
    model = _model(case)
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-2),
                                                    initial_scale=2.0**20)
    model.compile(optimizer, "mse")
    before = [w.numpy() for w in model.trainable_weights]
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert float(optimizer.dynamic_scale) == 2.0**19
    for old, new in zip(before, model.trainable_weights):
        np.testing.assert_array_equal(new.numpy(), old)  # the step was skipped
    history = model.fit(x, y, batch_size=32, epochs=10, verbose=0)
    assert float(optimizer.dynamic_scale) < 2.0**19  # halved again until steps were finite
    assert np.all(np.isfinite(history.history["loss"]))
    assert any(not np.array_equal(w.numpy(), old)
               for w, old in zip(model.trainable_weights, before))
    assert history.history["loss"][-1] < history.history["loss"][0]
