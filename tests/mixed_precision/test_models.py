"""ContinuousFlow (FFJORD) and LatentODE under both mixed policies against float32 twins.

The dynamics run in the compute dtype while the flow's state and log-determinant, and
LatentODE's times and ELBO, stay float32: the log-density, the ELBO and their gradients
(with mixed_float16's loss scale) match the float32 model with the same weights to a
few eps of the compute dtype (``precision_cases``).
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
import precision_cases as pc

LOSS_SCALE = {"mixed_float16": 2.0**8, "mixed_bfloat16": 1.0}


def _value_and_gradients(model, loss_fn, scale=1.0):
    with tf.GradientTape() as tape:
        value = loss_fn(model)
        loss = tf.reduce_mean(value) * scale
    grads = tape.gradient(loss, model.trainable_variables)
    flat = np.concatenate([np.asarray(g, np.float64).ravel() for g in grads]) / scale
    return np.asarray(value, np.float64), flat


def _check(make, build, loss_fn, policy, what, scale=None):
    reference = pc.under("float32", make)
    build(reference)
    model = pc.under(policy, make)
    build(model)
    model.set_weights(reference.get_weights())
    expected, expected_grads = _value_and_gradients(reference, loss_fn)
    value, grads = _value_and_gradients(model, loss_fn,
                                        LOSS_SCALE[policy] if scale is None else scale)
    assert value.dtype == np.float64 and np.all(np.isfinite(grads))
    pc.assert_close_in_eps(value, expected, policy, pc.STATE_RTOL, what)
    pc.assert_norm_close_in_eps(grads, expected_grads, policy, pc.GRADIENT_RTOL,
                                f"{what} gradient")
    return model


@pytest.mark.filterwarnings("ignore:.*below the machine epsilon:UserWarning")
@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_continuous_flow_log_prob(policy, trace):
    """log p(x) (float32 output) and the NLL's gradient through the adjoint."""
    x = np.random.default_rng(0).normal(size=(16, 2)).astype("float32")

    def make():
        return ki.models.ContinuousFlow(hidden_units=(8,), trace=trace, rtol=1e-3, atol=1e-3,
                                        jit_dynamics=False, seed=0)

    model = _check(make, lambda m: m(x), lambda m: m.log_prob(x, seed=[1, 2]), policy,
                   f"ContinuousFlow ({trace}) log_prob")
    assert model.log_prob(x).dtype == tf.float32
    assert model.sample(4, seed=[0, 1]).dtype == tf.float32
    assert model.dynamics[0].compute_dtype == pc.COMPUTE[policy]


@pytest.mark.filterwarnings("ignore:.*below the machine epsilon:UserWarning")
def test_latent_ode_elbo(policy):
    """The ELBO's terms at the posterior mean (no sampling noise) and their gradient, with
    the ODE-RNN encoder (a GRU cell and an ODE solve between observations)."""
    encoder = "ode_rnn"
    data = ki.datasets.spirals(8, num_points=16, seed=0)
    series = {k: data[k] for k in ("observations", "times", "mask")}

    def make():
        return ki.models.LatentODE(2, 2, 8, encoder=encoder, jit_dynamics=False, seed=0)

    def loss(model):
        reconstruction, kl = model.elbo_terms(series, training=False)
        return reconstruction + kl

    # No loss scale: the ELBO's gradients reach 1e3 (a reconstruction over 1/std**2 = 100),
    # so any scale above ~2**5 overflows float16 in the ODE-RNN encoder; fit's
    # LossScaleOptimizer lowers its scale to that (test_training).
    model = _check(make, lambda m: m(series), loss, policy, f"LatentODE ({encoder}) ELBO",
                   scale=1.0)
    assert model(series).dtype == pc.COMPUTE[policy]
