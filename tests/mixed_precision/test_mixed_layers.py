"""NeuralODE and DEQ under mixed_float16 and mixed_bfloat16: the float32 results to a few
eps of the compute dtype (tolerances: ``precision_cases``), with the loss scale of
mixed_float16's LossScaleOptimizer in the gradient."""

import math

import keras
import numpy as np
import pytest
import scipy.linalg

import keras_implicit as ki
import precision_cases as pc

# The defaults floored here (DEQ's tol, bfloat16's rtol) warn: test_tolerance_floor checks that.
pytestmark = pytest.mark.filterwarnings("ignore:.*below the machine epsilon:UserWarning")

ODE_CASES = {"dopri5-adjoint": ("dopri5", "adjoint"), "bosh3-backprop": ("bosh3", "backprop"),
             "rk4-adjoint": ("rk4", "adjoint"), "dopri5-checkpointed": ("dopri5", "checkpointed")}
LOSS_SCALE = {"mixed_float16": 2.0**8, "mixed_bfloat16": 1.0}


def _check_against_float32(make, policy, layer_name):
    x, _ = pc.data()
    reference, model = pc.twin(make, policy)
    layer = model.get_layer(layer_name)
    assert layer.compute_dtype == pc.COMPUTE[policy] and layer.variable_dtype == "float32"
    expected, expected_grads = pc.output_and_gradients(reference, x)
    out, grads = pc.output_and_gradients(model, x, LOSS_SCALE[policy])
    assert np.all(np.isfinite(grads))
    pc.assert_close_in_eps(out, expected, policy, pc.STATE_RTOL, f"{layer_name} output")
    pc.assert_norm_close_in_eps(grads, expected_grads, policy, pc.GRADIENT_RTOL,
                                f"{layer_name} gradient")
    assert model(x).dtype == pc.COMPUTE[policy]
    return layer


@pytest.mark.parametrize("case", list(ODE_CASES))
def test_neural_ode_matches_float32(policy, case):
    solver, gradient = ODE_CASES[case]
    layer = _check_against_float32(lambda: pc.ode_model(solver, gradient), policy, "ode")
    stats = layer.solver_stats()
    assert int(stats["nfe_forward"]) > 0
    assert (int(stats["nfe_backward"]) > 0) == (gradient == "adjoint")
    if gradient == "adjoint":
        # The loss scale cannot fool a normalized adjoint: float16's default.
        expected = ki.ops.Adjoint(normalize=policy == "mixed_float16")
        assert layer._solve_kwargs["gradient"] == expected
        assert layer.gradient == ki.ops.Adjoint()  # what get_config saves


@pytest.mark.parametrize("solver", ["anderson", "broyden", "picard"])
def test_deq_matches_float32(policy, solver):
    layer = _check_against_float32(lambda: pc.deq_model(solver), policy, "deq")
    stats = layer.solver_stats()
    assert int(stats["converged"]) == 1
    assert float(stats["residual"]) <= pc.EPS[policy]  # the floored tolerance
    assert int(stats["iterations_backward"]) > 0


def test_half_dynamics_in_a_float32_layer(policy):
    """A float32 NeuralODE/DEQ may hold mixed-policy dynamics/cell: the state stays float32,
    the evaluations are half precision, and the tolerance is floored for them."""
    x, _ = pc.data(features=8)
    dynamics = ki.layers.ConcatDense(8, activation="tanh")
    with pytest.warns(UserWarning, match="rtol=1e-06 is below"):
        layer = ki.layers.NeuralODE(dynamics, rtol=1e-6, dtype="float32")
    out = layer(x)
    assert out.dtype == "float32" and dynamics.compute_dtype == pc.COMPUTE[policy]
    cell = ki.layers.DEQDenseCell()
    with pytest.warns(UserWarning, match="tol=1e-06 is below"):
        deq = ki.layers.DEQ(cell, tol=1e-6, dtype="float32")
    assert deq(x).dtype == "float32"


class Glide(keras.layers.Layer):  # y = [height, velocity], at a constant velocity
    def call(self, y, t=None):
        return keras.ops.stack([y[:, 1], keras.ops.zeros_like(y[:, 1])], axis=1)


class Height(keras.layers.Layer):
    def call(self, y, t=None):
        return y[:, 0]


def test_event_times_keep_the_solver_time_dtype(policy):
    """Times are not rounded: event_time used to come back in the compute dtype (float16:
    t1 = 70000 became inf for a sample whose event did not fire)."""
    layer = ki.layers.NeuralODE(Glide(), t1=70_000.0, event=Height(), return_events=True,
                                jit_dynamics=False)
    # The first sample reaches height 0 at t = 2.5; the second never does.
    _, event_time, fired = layer(np.array([[2.0, -0.8], [-1.0, 0.0]], "float32"))
    assert event_time.dtype == "float32" and list(fired.numpy()) == [True, False]
    assert abs(float(event_time[0]) - 2.5) < 10 * pc.EPS[policy]
    assert float(event_time[1]) == 70_000.0
    # The functional API's symbolic outputs say so too (they had the compute dtype).
    inputs = keras.Input((2,))
    outputs = layer(inputs)
    assert [o.dtype for o in outputs] == [pc.COMPUTE[policy], "float32", "bool"]
    model = keras.Model(inputs, outputs)
    expected = [pc.COMPUTE[policy], "float32", "bool"]
    assert [o.dtype for o in model(np.zeros((1, 2), "float32"))] == expected


def test_a_float64_layer_refuses_float32_dynamics():
    with pytest.raises(TypeError, match="create the dynamics with dtype='float64'"):
        ki.layers.NeuralODE(ki.layers.ConcatDense(2), dtype="float64")
    with pytest.raises(TypeError, match="create the cell with dtype='float64'"):
        ki.layers.DEQ(ki.layers.DEQDenseCell(), dtype="float64")


# y' = y A (a damped rotation), y(1) = y0 expm(A); a fixed grid of N steps gives exactly
# y0 S^N with S the method's polynomial in hA (a truncated Taylor series of expm(hA)).
ROTATION = np.array([[-0.5, 1.0], [-1.0, -0.5]])
TAYLOR_TERMS = {"euler": 1, "midpoint": 2, "rk4": 4}


def _linear_ode(solver, policy, **kwargs):
    dynamics = keras.layers.Dense(2, use_bias=False)
    layer = ki.layers.NeuralODE(dynamics, solver=solver, jit_dynamics=False, **kwargs)
    layer.build((None, 2))
    dynamics.set_weights([ROTATION.astype("float32")])
    return layer


def _exact(solver, y0, num_steps):
    if solver not in TAYLOR_TERMS:
        return y0 @ scipy.linalg.expm(ROTATION)
    step = ROTATION / num_steps
    terms = [np.linalg.matrix_power(step, k) / math.factorial(k)
             for k in range(TAYLOR_TERMS[solver] + 1)]
    return y0 @ np.linalg.matrix_power(sum(terms), num_steps)


def _check_exact(solver, policy):
    y0 = np.random.default_rng(0).normal(size=(8, 2)).astype("float32")
    eps = pc.EPS[policy]
    if solver in TAYLOR_TERMS:
        layer, bound = _linear_ode(solver, policy, num_steps=8), pc.STATE_RTOL
    else:
        # rtol = atol = eps: the tightest solve the dtype resolves. An adaptive method's
        # global error is a few times its local tolerance (bosh3 measured: 3.3 eps).
        layer, bound = _linear_ode(solver, policy, rtol=eps, atol=eps), pc.STATE_RTOL + 4
    out = layer(y0)
    assert out.dtype == pc.COMPUTE[policy]
    pc.assert_close_in_eps(np.asarray(out, np.float64), _exact(solver, y0, 8), policy, bound,
                           f"{solver} against the exact solution")


def test_every_solver_meets_the_exact_solution(policy):
    """Each solver of ours and TFP's dopri5 on a linear ODE with a closed form."""
    for solver in ("dopri5", "bosh3", "tfp_dopri5", "rk4", "midpoint", "euler"):
        _check_exact(solver, policy)


def test_tfp_bdf_in_bfloat16():
    """bfloat16 once failed in every solver (np.finfo refuses it); BDF is the slowest."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    _check_exact("bdf", "mixed_bfloat16")


def test_a_sequential_evaluates_in_its_layers_dtype(policy):
    """A Keras model's own policy need not be its layers': a Sequential of float64 layers in a
    float64 NeuralODE keeps float64 (the exact solution to 1e-12), one of mixed-policy
    layers in a float32 layer evaluates in the compute dtype."""
    y0 = np.random.default_rng(0).normal(size=(4, 2))
    dense = keras.layers.Dense(2, use_bias=False, dtype="float64")
    sequential = pc.under("float32", lambda: keras.Sequential([dense]))
    layer = ki.layers.NeuralODE(sequential, rtol=1e-12, atol=1e-12, jit_dynamics=False,
                                dtype="float64")
    layer.build((None, 2))
    dense.set_weights([ROTATION])
    out = layer(y0)
    assert out.dtype == "float64"
    np.testing.assert_allclose(np.asarray(out), _exact("dopri5", y0, 8), rtol=1e-10)
    half = keras.Sequential([keras.layers.Dense(2)])  # under the mixed global policy
    assert ki.layers.time_dynamics.compute_dtype(half) == pc.COMPUTE[policy]
    with pytest.raises(TypeError, match="create the dynamics with dtype='float64'"):
        ki.layers.NeuralODE(half, dtype="float64")
