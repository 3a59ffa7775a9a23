"""Small training problems for the distribution tests: one per layer, gradient and model.

Imported by the tests and by ``multi_worker_main.py`` (the worker processes,
which must not import the tests' conftest). Every case builds its model under
the current strategy's scope, sets its weights from a NumPy generator (so one
process and every worker start from the same weights whatever Keras's random
state) and trains with plain SGD (an adaptive optimizer would turn round-off
in near-zero gradient components into steps of the learning rate's size).

``exact`` cases compute every sample's loss and gradient the same way whatever
the shard holding it: fixed-grid solvers, the exact trace, no noise. They
agree with one process to round-off (``EXACT_TOLERANCE``). The other cases
decide step sizes (dopri5) or when to stop iterating (DEQ) over the shard a
replica holds, so they agree to the solver's tolerance (``tolerance``).
"""

import math

import keras
import numpy as np
import tensorflow as tf

import keras_implicit as ki
from keras_implicit.layers.deq_cells import DEQDenseCell

EXACT_TOLERANCE = 1e-5
GLOBAL_BATCH = 16
NUM_SAMPLES = 32


def relative_difference(weights, reference):
    """The largest over the weight tensors of ``max |w - w_ref| / max |w_ref|``."""
    return max(float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))
               for a, b in zip(weights, reference))


def set_weights(model, seed=1, scale=1.0):
    """Every trainable variable ~ N(0, scale^2/fan_in), from NumPy; the rest keeps its value."""
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        shape = tuple(variable.shape)
        fan_in = shape[0] if len(shape) > 1 else 4
        variable.assign(scale * rng.normal(size=shape) / math.sqrt(fan_in))


def trainable_weights(model):
    return [np.array(v.numpy()) for v in model.trainable_variables]


def _sharded(dataset):
    """Auto-sharding by data: replica ``k`` of ``n`` takes the ``k``-th ``1/n`` of each batch."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _regression(dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(NUM_SAMPLES, 2)).astype(dtype)
    y = np.sin(x[:, :1] * x[:, 1:]).astype(dtype)
    return _sharded(tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH))


def _node_model(dtype, **ode_kwargs):
    return keras.Sequential([
        keras.Input((2,), dtype=dtype),
        keras.layers.Dense(4, dtype=dtype),
        ki.layers.NeuralODE(ki.layers.ConcatDense(4, activation="tanh", dtype=dtype),
                            dtype=dtype, name="neural_ode", **ode_kwargs),
        keras.layers.Dense(1, dtype=dtype),
    ])


def _compiled(model, learning_rate=0.2, scale=1.0):
    set_weights(model, scale=scale)
    model.compile(keras.optimizers.SGD(learning_rate), "mse", metrics=["mae"])
    return model


def node_adjoint_rk4():
    return _compiled(_node_model("float32", solver="rk4", num_steps=4)), _regression("float32")


def node_backprop_rk4():
    model = _node_model("float32", solver="rk4", num_steps=4, gradient="backprop")
    return _compiled(model), _regression("float32")


def node_backprop_dopri5():
    model = _node_model("float64", solver="dopri5", rtol=1e-9, atol=1e-9, gradient="backprop")
    return _compiled(model), _regression("float64")


def node_adjoint_dopri5():
    model = _node_model("float64", solver="dopri5", rtol=1e-9, atol=1e-9)
    return _compiled(model), _regression("float64")


def deq_implicit():
    dtype = "float64"
    model = keras.Sequential([
        keras.Input((2,), dtype=dtype),
        keras.layers.Dense(4, dtype=dtype),
        ki.layers.DEQ(DEQDenseCell(dtype=dtype), state_shape=(6,), tol=1e-11, max_iter=200,
                      dtype=dtype, name="deq"),
        keras.layers.Dense(1, dtype=dtype),
    ])
    # Weights of scale 0.5 make the cell a contraction: the solves converge.
    return _compiled(model, learning_rate=0.5, scale=0.5), _regression(dtype)


def continuous_flow_exact_trace():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(NUM_SAMPLES, 2)) * [1.0, 0.5] + [0.5, 0.0]).astype("float32")
    flow = ki.models.ContinuousFlow(hidden_units=(8,), solver="rk4", num_steps=4,
                                    trace="exact", kinetic_energy_weight=0.1, seed=3)
    flow.build((None, 2))
    set_weights(flow)
    flow.compile(keras.optimizers.SGD(0.2))
    return flow, _sharded(tf.data.Dataset.from_tensor_slices(x).batch(GLOBAL_BATCH))


def latent_ode_without_noise():
    """A latent ODE whose posterior has standard deviation e^-20 (log-variance -40).

    Each replica draws the reparameterisation noise for its own shard, so with
    noise two workers would train on other draws than one process. Here the
    noise is far below float32's resolution of ``z_t0``: what is compared is
    the encoder, the solve at the batch's (shared) times, the decoder and the
    ELBO's reconstruction and KL terms.
    """
    rng = np.random.default_rng(3)
    steps = 5
    times = np.tile(np.linspace(0.0, 1.0, steps), (NUM_SAMPLES, 1)).astype("float32")
    mask = (rng.uniform(size=(NUM_SAMPLES, steps)) < 0.7).astype("float32")
    mask[:, 0] = 1.0
    observations = np.stack([np.cos(3 * times), np.sin(3 * times)], -1).astype("float32")
    observations = observations + 0.1 * rng.normal(size=observations.shape).astype("float32")
    model = ki.models.LatentODE(obs_dim=2, latent_dim=2, hidden_units=8, solver="rk4",
                                num_steps=4, observation_std=1.0, seed=4)
    model.compile(keras.optimizers.SGD(0.05))
    set_weights(model)
    head = model.encoder.head
    kernel, bias = head.kernel.numpy(), head.bias.numpy()
    kernel[:, 2:], bias[2:] = 0.0, -40.0
    head.kernel.assign(kernel)
    head.bias.assign(bias)
    data = {"observations": observations, "times": times, "mask": mask}
    return model, _sharded(tf.data.Dataset.from_tensor_slices(data).batch(GLOBAL_BATCH))


CASES = {
    "node_adjoint_rk4": (node_adjoint_rk4, "exact"),
    "node_backprop_rk4": (node_backprop_rk4, "exact"),
    "continuous_flow_exact_trace": (continuous_flow_exact_trace, "exact"),
    "latent_ode_without_noise": (latent_ode_without_noise, "exact"),
    "node_adjoint_dopri5": (node_adjoint_dopri5, "tolerance"),
    "node_backprop_dopri5": (node_backprop_dopri5, "tolerance"),
    "deq_implicit": (deq_implicit, "tolerance"),
}
EPOCHS = 2


def build(name):
    """``(model, dataset)`` of a case, the model built under the current strategy's scope."""
    with tf.distribute.get_strategy().scope():
        return CASES[name][0]()


def train_one_process(name, epochs=EPOCHS):
    """The reference: Keras's own ``fit`` in this process, on the same global batches."""
    keras.utils.set_random_seed(0)
    model, dataset = build(name)
    initial = trainable_weights(model)
    model.fit(dataset, epochs=epochs, shuffle=False, verbose=0)
    return initial, trainable_weights(model)
