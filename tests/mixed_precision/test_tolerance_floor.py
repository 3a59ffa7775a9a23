"""Tolerances below what the compute dtype resolves: floored, with one warning, never an error.

The warning names the layer, the policy, the argument and both values; it is given
once, when the layer is made, not at every call or training step. The config keeps
the value the user gave, so a model saved under a mixed policy and loaded under
float32 solves to the tolerance it was written with.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
import precision_cases as pc

pytestmark = pytest.mark.plain_graph  # warnings and checked arguments (tests/conftest.py)

EPS_TEXT = {"mixed_float16": "0.000977", "mixed_bfloat16": "0.00781"}


def _ode(**kwargs):
    return ki.layers.NeuralODE(ki.layers.ConcatDense(4, activation="tanh"), jit_dynamics=False,
                               name="ode", **kwargs)


def _deq(**kwargs):
    return ki.layers.DEQ(ki.layers.DEQDenseCell(), name="deq", **kwargs)


def _made_with(make):
    """``(layer, [warning messages])`` of ``make()``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer = make()
    return layer, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("make, argument, given", [
    (lambda: _deq(), "tol", "0.0001"),  # DEQ's default, below both epsilons
    (lambda: _ode(rtol=1e-8), "rtol", "1e-08"),  # a policy our solvers cannot honour
    (lambda: _deq(tol=1e-8), "tol", "1e-08"),
])
def test_one_warning_names_layer_policy_argument_and_values(policy, make, argument, given):
    layer, messages = _made_with(make)
    assert len(messages) == 1, messages
    [message] = messages
    name = type(layer).__name__
    for part in (f"{name} '{layer.name}'", f"'{policy}'", f"{argument}={given}",
                 EPS_TEXT[policy], f"uses {argument}={EPS_TEXT[policy][:6]}",
                 pc.COMPUTE[policy]):
        assert part in message, (part, message)
    # The layer keeps what it was given; its solves use the floor without warning again.
    assert layer.get_config()[argument] == float(given)
    x, _ = pc.data(features=4 if name == "NeuralODE" else 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x)
        tf.function(layer)(x)  # a trace: where odeint / fixed_point would warn again


def test_default_ode_tolerance_warns_only_where_bfloat16_cannot_meet_it(policy):
    """NeuralODE's default rtol=1e-3 is above float16's epsilon, below bfloat16's."""
    layer, messages = _made_with(_ode)
    assert len(messages) == (policy == "mixed_bfloat16"), messages
    if messages:
        assert "rtol=0.001 is below" in messages[0]


def test_the_floor_is_what_the_solver_uses(policy):
    """rtol=1e-8 solves exactly as rtol=eps: same steps, same output."""
    x, _ = pc.data()
    floored, _ = _made_with(lambda: _ode(rtol=1e-8))
    at_eps = _ode(rtol=pc.EPS[policy])
    at_eps.build(x.shape)
    floored.build(x.shape)
    floored.set_weights(at_eps.get_weights())
    np.testing.assert_array_equal(np.asarray(floored(x)), np.asarray(at_eps(x)))
    assert int(floored.solver_stats()["nfe_forward"]) == int(at_eps.solver_stats()["nfe_forward"])


def test_backward_tolerances_are_floored_in_the_same_warning(policy):
    _, messages = _made_with(lambda: _ode(rtol=1e-8, gradient=ki.ops.Adjoint(rtol=1e-9)))
    assert len(messages) == 1 and "rtol=1e-08 and gradient=Adjoint(rtol)=1e-09 are below" \
        in messages[0], messages
    _, messages = _made_with(lambda: _deq(tol=1e-2, gradient=ki.ops.Implicit(tol=1e-9)))
    assert len(messages) == 1 and "gradient=Implicit(tol)=1e-09 is below" in messages[0]


def test_fixed_grids_and_float32_keep_their_tolerances(policy):
    """A fixed grid has no error control to floor; float32 resolves 1e-8."""
    _, messages = _made_with(lambda: _ode(rtol=1e-8, solver="rk4", num_steps=4))
    assert messages == []
    keras.mixed_precision.set_global_policy("float32")
    _, messages = _made_with(lambda: (_ode(rtol=1e-8), _deq(tol=1e-8)))
    assert messages == []


def test_models_warn_once_naming_themselves(policy):
    """ContinuousFlow's default rtol=1e-5 and LatentODE's rtol=1e-8: one warning each."""
    flow, messages = _made_with(lambda: ki.models.ContinuousFlow(hidden_units=(4,)))
    assert len(messages) == 1 and "ContinuousFlow 'continuous_flow'" in messages[0] \
        and "rtol=1e-05" in messages[0] and f"'{policy}'" in messages[0], messages
    _, messages = _made_with(lambda: ki.bijectors.FFJORD(ki.layers.ConcatMLP((4,)),
                                                         event_shape=(2,)))
    assert len(messages) == 1 and "FFJORD 'ffjord'" in messages[0], messages
    _, messages = _made_with(lambda: ki.models.LatentODE(2, 2, 4, rtol=1e-8))
    assert len(messages) == 1 and "'latent_ode'" in messages[0] \
        and "rtol=1e-08" in messages[0], messages
