"""ki.layers.group_norm: keras.layers.GroupNormalization's function, plain and compiled."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_implicit.layers import group_norm


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64", "mixed_float16", "mixed_bfloat16"])
def test_group_norm_is_keras_group_normalization(dtype, relu, compiled):
    """Values and gradients (input, gamma, beta) of GroupNormalization (then ReLU)."""
    norm = keras.layers.GroupNormalization(4, dtype=dtype)
    norm.build((None, 5, 5, 8))
    rng = np.random.default_rng(0)
    norm.gamma.assign(rng.uniform(0.5, 1.5, 8))
    norm.beta.assign(rng.normal(size=8))
    compute = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}.get(dtype, dtype)
    x = tf.constant(3.0 * rng.normal(size=(3, 5, 5, 8)) + 1.0, compute)
    g = tf.constant(rng.normal(size=(3, 5, 5, 8)), compute)

    def value_and_grads(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return [y] + tape.gradient(y, [x, norm.gamma, norm.beta], output_gradients=g)

    def keras_norm(v):
        return tf.nn.relu(norm(v)) if relu else norm(v)

    expected = value_and_grads(keras_norm)
    ours = value_and_grads(lambda v: group_norm(norm, v, relu=relu, compiled=compiled))
    assert ours[0].dtype == expected[0].dtype
    tolerance = {"float32": 1e-5, "float64": 1e-12, "mixed_float16": 2e-2,
                 "mixed_bfloat16": 5e-2}[dtype]
    for a, b in zip(ours, expected):
        a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
        np.testing.assert_allclose(a, b, rtol=0, atol=tolerance * max(1.0, np.abs(b).max()))


def test_group_norm_without_scale_or_center_and_another_axis():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(2, 3, 3, 4)))
    plain = keras.layers.GroupNormalization(2, scale=False, center=False, dtype="float64")
    np.testing.assert_allclose(group_norm(plain, x, compiled=True), plain(x), atol=1e-12)
    # Channels first: the layer itself is called.
    first = keras.layers.GroupNormalization(3, axis=1, dtype="float64")
    np.testing.assert_allclose(group_norm(first, x, relu=True), tf.nn.relu(first(x)), atol=0)


def test_group_norm_builds_the_layer_and_refuses_other_layers():
    x = tf.ones((2, 3, 3, 4))
    norm = keras.layers.GroupNormalization(2)
    np.testing.assert_allclose(group_norm(norm, x, compiled=True), norm(x), atol=1e-6)
    with pytest.raises(TypeError, match="norm=<Dense"):
        group_norm(keras.layers.Dense(4), x)


@pytest.mark.parametrize("relu", [False, True])
def test_compiled_group_norm_second_derivatives(relu):
    """The compiled norm's gradient (its own program, from the saved statistics) is itself
    differentiable: Hessian-vector products equal the plain function's in float64."""
    norm = keras.layers.GroupNormalization(2, dtype="float64")
    norm.build((None, 3, 3, 4))
    rng = np.random.default_rng(2)
    norm.gamma.assign(rng.uniform(0.5, 1.5, 4))
    norm.beta.assign(rng.normal(size=4))
    x = tf.constant(rng.normal(size=(2, 3, 3, 4)))
    direction = tf.constant(rng.normal(size=(2, 3, 3, 4)))

    def hessian_vector_products(compiled):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                loss = tf.reduce_sum(tf.sin(group_norm(norm, x, relu=relu, compiled=compiled)))
            along = tf.reduce_sum(inner.gradient(loss, x) * direction)
        return outer.gradient(along, [x, norm.gamma, norm.beta])

    for ours, plain in zip(hessian_vector_products(True), hessian_vector_products(False)):
        np.testing.assert_allclose(ours, plain, rtol=0, atol=1e-12)


def test_compiled_group_norm_in_a_loop_stores_only_what_its_gradient_reads():
    """Backprop through a loop stores at every step each tensor the gradient reads from
    the body: the compiled norm's input, its two statistics and its weights (5), where
    the plain norm's gradient reads 11 (the compiled forward's own gradient had read its
    intermediates; a ReLU flag captured by the gradient had added a sixth)."""
    norm = keras.layers.GroupNormalization(2)
    norm.build((None, 3, 3, 4))
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 3, 3, 4)), tf.float32)

    def accumulators(compiled):
        @tf.function
        def gradients(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                _, y = tf.while_loop(
                    lambda i, y: i < 3,
                    lambda i, y: (i + 1, group_norm(norm, y, relu=True, compiled=compiled)),
                    (0, x))
                loss = tf.reduce_sum(y)
            return tape.gradient(loss, [x, norm.gamma, norm.beta])

        graph = gradients.get_concrete_function(x).graph.as_graph_def()
        return sum(node.op == "TensorListPushBack"
                   for function in graph.library.function for node in function.node_def)

    compiled = accumulators(compiled=True)
    assert compiled <= 5, compiled
    assert accumulators(compiled=False) > compiled
