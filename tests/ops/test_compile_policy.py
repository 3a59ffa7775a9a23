"""jit_dynamics="auto" | True | False: the same numbers on every path, the path it chose,
and a clean fallback for dynamics XLA cannot compile."""

import collections
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki


def dense_dynamics():
    layer = ki.layers.ConcatDense(4, activation="tanh", dtype="float64")
    layer.build((None, 4))
    return layer


def conv_dynamics():
    layer = ki.layers.ConcatConv2D(2, 3, activation="tanh", dtype="float64")
    layer.build((None, 3, 3, 2))
    return layer


def block_dynamics():
    """Convolutions with norms that compile themselves (layers.group_norm)."""
    layer = ki.applications.ODEBlockDynamics(4, groups=2, dtype="float64")
    layer.build((None, 3, 3, 4))
    return layer


def solve_and_grad(layer, y0, jit, dynamics=None, tolerance=1e-9, **kwargs):
    """``([states, dL/dy0, dL/dweights...], the path the solve took)``, traced."""
    dynamics = dynamics or (lambda t, y: layer(y, t=t))
    box = {}

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            tape.watch(y0)
            result = ki.ops.odeint(dynamics, y0, [0.0, 0.4, 1.0], rtol=tolerance,
                                   atol=tolerance, jit_dynamics=jit, **kwargs)
            loss = tf.reduce_sum(result.states ** 2)
        box["compiled"] = result.stats.compiled
        grads = tape.gradient(loss, [y0] + layer.trainable_variables)
        return [result.states] + grads

    values = [x.numpy() for x in run()]
    return values, box["compiled"]


# Every solver of ours with every gradient strategy (TFP's solvers are never compiled).
CASES = [(solver, gradient, {"num_steps": 6} if solver in ("euler", "midpoint", "rk4") else {})
         for solver in ("dopri5", "bosh3", "rk4", "midpoint", "euler")
         for gradient in ("adjoint", "backprop", "checkpointed")]


@pytest.mark.parametrize("solver,gradient,kwargs", CASES)
def test_every_path_gives_the_same_states_and_gradients(solver, gradient, kwargs):
    layer = dense_dynamics()
    y0 = tf.constant(np.random.RandomState(0).randn(3, 4))
    reference, path = solve_and_grad(layer, y0, False, solver=solver, gradient=gradient,
                                     **kwargs)
    assert path == "none"
    # Under a taped gradient "auto" decides on the plain graph, False's own program
    # (test_auto_reports_the_path_it_chose): only the adjoint's "auto" is another path.
    paths = {"auto": "solve", True: "dynamics"}
    for jit in ("auto", True) if gradient == "adjoint" else (True,):
        values, path = solve_and_grad(layer, y0, jit, solver=solver, gradient=gradient,
                                      **kwargs)
        assert path == paths[jit]
        for a, b in zip(reference, values):
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12, err_msg=str(jit))


@pytest.mark.parametrize("options", [
    {"step_control": ki.solvers.PIDController(pcoeff=0.2, icoeff=0.7, max_step=0.3)},
    {"step_control": ki.solvers.IController(jump_times=[0.5])},
    {"gradient": ki.ops.Adjoint(rtol=1e-10, atol=1e-10, normalize=True)},
], ids=["pid", "jump_times", "adjoint_options"])
def test_controllers_and_adjoint_options_give_the_same_numbers_compiled_whole(options):
    """What the layer contract's cases of these options leave to this module: the solve
    that "auto" compiles whole runs their step control and backward options as the
    plain graph does. At tolerance 1e-5 an option dropped or changed moves the numbers by
    about 1e6 times the bound (checked against the solve without it); the two paths agree
    to 1e-4 of it."""
    layer = dense_dynamics()
    y0 = tf.constant(np.random.RandomState(5).randn(3, 4))
    reference, _ = solve_and_grad(layer, y0, False, tolerance=1e-5, **options)
    values, path = solve_and_grad(layer, y0, "auto", tolerance=1e-5, **options)
    assert path == "solve"
    for a, b in zip(reference, values):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_convolutions_with_compiled_norms_give_the_same_numbers_compiled_whole(gradient):
    layer = block_dynamics()
    y0 = tf.constant(np.random.RandomState(2).randn(2, 3, 3, 4))
    # This block amplifies differences strongly: at rtol = 1e-9 (2234 evaluations) the
    # 1e-16 by which XLA's and oneDNN's convolutions differ grow to 1e-7 in the states
    # and 1e-3 in backprop's gradients; at 1e-6 (110 evaluations) to 1e-10.
    # "auto" runs this block as False does (test_auto_reports_the_path_it_chose); True
    # compiles it whole, its compiled norms traced plainly inside (a compiled function
    # nested in the adjoint's compiled dynamics crashed TensorFlow).
    reference, _ = solve_and_grad(layer, y0, False, tolerance=1e-6, gradient=gradient)
    values, _ = solve_and_grad(layer, y0, True, tolerance=1e-6, gradient=gradient)
    for a, b in zip(reference, values):
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-9 * np.abs(a).max())


def test_times_passed_in_give_the_numbers_of_constant_times():
    """The compiled solve folds constant times into its program; times that are an
    argument of the traced function stay one of its inputs. Same numbers."""
    layer = dense_dynamics()
    y0 = tf.constant(np.random.RandomState(3).randn(3, 4))

    paths = []

    def solve(times):
        with tf.GradientTape() as tape:
            tape.watch(y0)
            result = ki.ops.odeint(lambda t, y: layer(y, t=t), y0, times, rtol=1e-9, atol=1e-9)
            loss = tf.reduce_sum(result.states ** 2)
        paths.append(result.stats.compiled)
        return [result.states] + tape.gradient(loss, [y0] + layer.trainable_variables)

    times = [0.0, 0.4, 1.0]
    constant = tf.function(lambda: solve(times))()
    passed = tf.function(solve)(tf.constant(times, tf.float64))
    assert paths == ["solve", "solve"]
    for a, b in zip(constant, passed):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make,gradient,expected", [
    (dense_dynamics, "adjoint", "solve"), (dense_dynamics, "backprop", "none"),
    (dense_dynamics, "checkpointed", "none"), (conv_dynamics, "adjoint", "dynamics"),
    (block_dynamics, "adjoint", "none"), (block_dynamics, "backprop", "none")])
def test_auto_reports_the_path_it_chose(make, gradient, expected):
    layer = make()
    shape = {dense_dynamics: (2, 4), conv_dynamics: (2, 3, 3, 2),
             block_dynamics: (2, 3, 3, 4)}[make]
    y0 = tf.constant(np.random.RandomState(1).randn(*shape))
    box = {}

    @tf.function
    def run():
        result = ki.ops.odeint(lambda t, y: layer(y, t=t), y0, [0.0, 1.0], gradient=gradient)
        box["compiled"] = result.stats.compiled
        return result.states

    run()
    assert box["compiled"] == expected
    eager = ki.ops.odeint(lambda t, y: layer(y, t=t), y0, [0.0, 1.0], gradient=gradient)
    assert eager.stats.compiled == "none"  # eager calls compile nothing


def test_a_persistent_tape_differentiates_the_compiled_whole_solve():
    """A persistent tape made TensorFlow rewrite the compiled solve's call to return its
    loop's accumulators, which cannot leave XLA ("Support for TensorList crossing the
    XLA/TF boundary is not implemented"); the call is hidden from tapes now, as the
    adjoint defines its gradient."""
    layer = dense_dynamics()
    y0 = tf.constant(np.random.RandomState(5).randn(2, 4))

    def run(jit):
        box = {}

        @tf.function
        def grads():
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(y0)
                result = ki.ops.odeint(lambda t, y: layer(y, t=t), y0, [0.0, 1.0], rtol=1e-6,
                                       atol=1e-6, jit_dynamics=jit)
                loss = tf.reduce_sum(result.states[-1] ** 2)
            box["compiled"] = result.stats.compiled
            return tape.gradient(loss, [y0] + layer.trainable_variables)

        return [g.numpy() for g in grads()], box["compiled"]

    want, _ = run(False)
    got, compiled = run("auto")
    assert compiled == "solve"
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_auto_compiles_dynamics_that_close_over_a_tensor_of_the_callers_graph():
    """``scale`` is computed in the same tf.function: lowering the probe cannot evaluate
    it, so it is lowered as an argument (it had fallen back, with a warning)."""
    def run_with(jit):
        @tf.function
        def run(y0, rate):
            with tf.GradientTape() as tape:
                tape.watch(y0)
                scale = 2.0 * rate
                result = ki.ops.odeint(lambda t, y: -scale * y, y0, [0.0, 1.0], rtol=1e-10,
                                       atol=1e-10, jit_dynamics=jit)
                loss = tf.reduce_sum(result.states[-1])
            return result.states[-1], tape.gradient(loss, y0), result.stats.compiled

        return run(tf.constant([1.0, -2.0], tf.float64), tf.constant(0.75, tf.float64))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        state, grad, compiled = run_with("auto")
    assert compiled.numpy() == b"solve"
    # y(1) = y0 exp(-2 rate): dy(1)/dy0 = exp(-2 rate)
    np.testing.assert_allclose(state, np.array([1.0, -2.0]) * np.exp(-1.5), rtol=1e-8)
    np.testing.assert_allclose(grad, [np.exp(-1.5)] * 2, rtol=1e-8)
    reference = run_with(False)
    np.testing.assert_allclose(state, reference[0], rtol=1e-12)
    np.testing.assert_allclose(grad, reference[1], rtol=1e-12)


def test_auto_falls_back_with_one_warning_for_dynamics_xla_cannot_compile():
    layer = dense_dynamics()

    def dynamics(t, y):
        doubled = tf.py_function(lambda v: 2.0 * v, [y], tf.float64)
        return layer(tf.ensure_shape(doubled, y.shape) * 0.5, t=t)

    y0 = tf.constant(np.random.RandomState(2).randn(3, 4))
    with pytest.warns(UserWarning, match="does not compile with XLA.*EagerPyFunc"):
        values, _ = solve_and_grad(layer, y0, "auto", dynamics)
    reference, _ = solve_and_grad(layer, y0, False, dynamics)
    for a, b in zip(reference, values):
        np.testing.assert_allclose(b, a, rtol=1e-12)


def tanh_with_gradient(compilable):
    """tanh under ``tf.custom_gradient``, its gradient in TensorFlow ops or in NumPy."""
    @tf.custom_gradient
    def tanh(x):
        y = tf.tanh(x)

        def gradient(dy):
            if compilable:
                return dy * (1.0 - y * y)
            return tf.ensure_shape(tf.numpy_function(lambda d, v: d * (1.0 - v * v), [dy, y],
                                                     dy.dtype), dy.shape)
        return y, gradient
    return tanh


def tanh_in_a_loop(maximum_iterations):
    """tanh after a ``tf.while_loop`` of two scalings; the loop's gradient keeps its
    intermediates in lists that XLA can size only given ``maximum_iterations``."""
    def tanh(x):
        return tf.tanh(tf.while_loop(lambda i, v: i < 2, lambda i, v: (i + 1, 0.9 * v), (0, x),
                                     maximum_iterations=maximum_iterations)[1])
    return tanh


# (the activation, the path "auto" takes, the fallback's reason or None)
OWN_GRADIENTS = {
    "custom gradient in TensorFlow": (tanh_with_gradient(True), "solve", None),
    "custom gradient in NumPy": (tanh_with_gradient(False), "none", "XLA has no kernel for PyFunc"),
    "loop with maximum_iterations": (tanh_in_a_loop(2), "solve", None),
    "loop without": (tanh_in_a_loop(None), "none", "XLA compilation requires a fixed tensor list"),
}


@pytest.mark.parametrize("case", list(OWN_GRADIENTS))
def test_auto_probes_the_gradient_of_the_dynamics(case):
    """The adjoint's backward solve is compiled whole: dynamics whose gradient XLA refuses
    must make the plan fall back at trace time (they failed in the backward pass at run
    time), and those whose gradient XLA compiles must not."""
    activation, expected_path, reason = OWN_GRADIENTS[case]
    layer = dense_dynamics()

    def dynamics(t, y):
        return activation(layer.dense(tf.concat([y, tf.fill([tf.shape(y)[0], 1], t)], -1)))

    y0 = tf.constant(np.random.RandomState(3).randn(3, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values, path = solve_and_grad(layer, y0, "auto", dynamics)
    messages = [str(w.message) for w in caught if "XLA" in str(w.message)]
    assert path == expected_path
    if reason is None:
        assert not messages
    else:
        assert len(messages) == 1 and f"(its gradient: {reason}" in messages[0], messages
    reference, _ = solve_and_grad(layer, y0, False, dynamics)
    for a, b in zip(reference, values):
        np.testing.assert_allclose(b, a, rtol=1e-12)


def test_auto_keeps_the_random_numbers_of_false_and_warns_only_for_refusals():
    """Dynamics or cells that draw random numbers run in TensorFlow's graph (XLA draws other
    numbers); a state of unknown rank cannot be probed. Neither is XLA's refusal: no
    warning, and the numbers of False."""
    y0 = tf.constant(np.random.RandomState(6).randn(3, 4))

    def noisy(t, y):
        return -y + 0.1 * tf.random.stateless_normal(tf.shape(y), [1, 2], dtype=y.dtype)

    def solve(jit, y, dynamics=noisy):
        result = ki.ops.odeint(dynamics, y, [0.0, 1.0], solver="rk4", num_steps=4,
                               jit_dynamics=jit)
        return result.states[-1], result.stats.compiled

    def cell(z, x):
        return 0.5 * tf.tanh(z) + x + 0.01 * tf.random.stateless_uniform(
            tf.shape(x), [3, 4], dtype=x.dtype)

    def fixed_point(jit):
        result = ki.ops.fixed_point(cell, y0, tf.zeros_like(y0), jit_cell=jit)
        return result.z, result.stats.compiled

    unknown_rank = tf.TensorSpec(None, tf.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any fallback warning fails the test
        for run, args in [(solve, (y0,)), (fixed_point, ())]:
            (want, _), (got, path) = (tf.function(run)(jit, *args) for jit in (False, "auto"))
            np.testing.assert_array_equal(got, want)
            assert path.numpy() == b"none"
        traced = tf.function(lambda y: solve("auto", y, lambda t, y: -y),
                             input_signature=[unknown_rank])
        got, path = traced(y0)
        assert path.numpy() == b"none"
        np.testing.assert_array_equal(got, solve(False, y0, lambda t, y: -y)[0])


@pytest.mark.parametrize("gradient", ["backprop", "checkpointed"])
def test_a_taped_gradient_on_dense_dynamics_decides_without_probing(gradient):
    """Under a tape dense dynamics run uncompiled anyway: no lowering, so no fallback
    warning for an op XLA refuses (a string op); a convolution still gets its dynamics
    compiled."""
    layer = dense_dynamics()

    def dynamics(t, y):
        one = tf.cast(tf.strings.length(tf.strings.as_string(t)) > 0, y.dtype)
        return layer(y * one, t=t)

    box = {}

    def traced_plan(fn, shape, taped):
        @tf.function
        def run(y):
            with tf.GradientTape() as tape:
                tape.watch(y)
                result = ki.ops.odeint(fn, y, [0.0, 1.0], gradient=gradient)
                loss = tf.reduce_sum(result.states ** 2)
            box["compiled"] = result.stats.compiled
            return result.states, tape.gradient(loss, y) if taped else tf.zeros_like(y)

        run.get_concrete_function(tf.TensorSpec(shape, tf.float64))  # the plan is traced
        return box["compiled"], run

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled, run = traced_plan(dynamics, (3, 4), taped=True)
        assert compiled == "none"  # False's program: the string op runs as it is
        states, grad = run(tf.constant(np.random.RandomState(3).randn(3, 4)))
    assert np.all(np.isfinite(states)) and np.all(np.isfinite(grad))
    conv = conv_dynamics()
    assert traced_plan(lambda t, s: conv(s, t=t), (2, 3, 3, 2), taped=False)[0] == "dynamics"


@pytest.mark.parametrize("gradient,traces", [("backprop", 1), ("adjoint", 2)])
def test_a_solve_in_the_graph_reuses_the_plans_trace_of_the_dynamics(gradient, traces):
    """The plan traces the dynamics to read its ops; the solve calls that trace. The
    adjoint's backward traces it once more, inside its vector-Jacobian product. (That
    the reused trace gives False's numbers: the test of compiled norms above.)"""
    layer = block_dynamics()
    calls = []

    def dynamics(t, y):
        calls.append(t)
        return layer(y, t=t)

    box = {}

    @tf.function
    def run(y):
        with tf.GradientTape() as tape:
            tape.watch(y)
            result = ki.ops.odeint(dynamics, y, [0.0, 1.0], gradient=gradient)
            loss = tf.reduce_sum(result.states[-1] ** 2)
        box["compiled"] = result.stats.compiled
        return tape.gradient(loss, y)

    run.get_concrete_function(tf.TensorSpec((2, 3, 3, 4), tf.float64))
    assert box["compiled"] == "none" and len(calls) == traces


def test_the_layer_keeps_auto_in_its_config_and_reports_the_path(tmp_path):
    x = np.random.RandomState(3).randn(8, 4).astype("float32")
    model = keras.Sequential([keras.Input((4,)), ki.layers.NeuralODE(
        ki.layers.ConcatDense(4, activation="tanh"), name="ode"), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    model.fit(x, x[:, :1], epochs=1, verbose=0)
    layer = model.get_layer("ode")
    assert layer.get_config()["jit_dynamics"] == "auto"
    assert layer.compiled_path == "solve"  # a dense dynamics: the whole solve, in fit
    layer(x)
    assert layer.compiled_path == "none"  # an eager call compiles nothing
    with pytest.raises(ValueError, match="jit_dynamics='yes'"):
        ki.layers.NeuralODE(ki.layers.ConcatDense(4), jit_dynamics="yes")
    # A NumPy bool (e.g. from a config read with NumPy) is the bool it holds; 1 is not.
    config = ki.layers.NeuralODE(ki.layers.ConcatDense(4), jit_dynamics=np.True_).get_config()
    assert config["jit_dynamics"] is True
    assert ki.layers.DEQ(ki.layers.DEQDenseCell(), jit_cell=np.False_).jit_cell is False
    with pytest.raises(ValueError, match="jit_cell=1"):
        ki.layers.DEQ(ki.layers.DEQDenseCell(), jit_cell=1)
    with pytest.raises(ValueError, match="jit_dynamics=True"):
        ki.layers.NeuralODE(ki.layers.ConcatDense(4), solver="bdf", jit_dynamics=True)


def test_flows_and_latent_odes_report_the_path_of_their_last_solve():
    x = np.random.RandomState(4).randn(16, 2).astype("float32")
    flow = ki.models.ContinuousFlow(hidden_units=(8,), rtol=1e-3, atol=1e-3, seed=0)
    assert flow.compiled_path is None
    tf.function(flow.log_prob)(x)
    # A dense dynamics under the adjoint: the whole solve, in the flow and in its FFJORD.
    assert flow.compiled_path == "solve" and flow.bijectors[0].compiled_path == "solve"
    flow.log_prob(x)
    assert flow.compiled_path == "none" and flow.bijectors[0].compiled_path == "none"
    data = ki.datasets.spirals(8, num_points=10, seed=0, min_observations=3,
                               max_observations=5)
    model = ki.models.LatentODE(2, 2, 4, seed=1)
    assert model.compiled_path is None
    model.predict({k: data[k] for k in ("observations", "times", "mask")}, verbose=0)
    # The union of a batch's times has a length known at run time only: trial steps.
    assert model.compiled_path == "step" == model.latent_ode.compiled_path


def test_a_compiled_function_returns_its_scalars_of_one_dtype_as_one_output():
    """Each output of a compiled call costs TensorFlow's executor about a microsecond, so
    the compiled solve's statistics leave XLA as one vector per dtype; the structure,
    values and dtypes come back unchanged, per trace (two signatures, two layouts)."""
    from keras_implicit.ops.xla_function import compile_whole

    Pair = collections.namedtuple("Pair", ["state", "stats"])

    def fn(y, scale):
        n = tf.shape(y, out_type=tf.int32)[0]
        stats = {"n": n, "twice": 2 * n, "sum": tf.reduce_sum(y), "max": tf.reduce_max(y),
                 "one": tf.constant(1, tf.int64), "none": None}
        return Pair([y * scale, tf.reduce_min(y)], stats)

    compiled = compile_whole(fn)

    @tf.function
    def run(y):
        return compiled(y, 2.0)

    for y in (tf.constant([1.0, -2.0, 4.0]), tf.constant([[1.0, 3.0], [5.0, -1.0]])):
        got = run(y)
        want = fn(y, 2.0)
        assert isinstance(got, Pair) and got.stats["none"] is None
        np.testing.assert_allclose(got.state[0], want.state[0])
        for key in ("n", "twice", "sum", "max", "one"):
            assert got.stats[key].dtype == want.stats[key].dtype
            assert got.stats[key].shape == ()
            assert got.stats[key].numpy() == want.stats[key].numpy()
        assert got.state[1].numpy() == want.state[1].numpy()
        calls = [op for op in run.get_concrete_function(y).graph.get_operations()
                 if op.type in ("PartitionedCall", "StatefulPartitionedCall")]
        # The state, the int32 pair, the three float32 scalars; the int64 alone stays as
        # it is (a vector of one would cost a stack and an unstack).
        assert [len(op.outputs) for op in calls] == [4]


def test_disable_auto_jit_runs_auto_in_the_graph_and_leaves_true_compiled():
    """``ki.config.disable_auto_jit()``: every "auto" solve (ODE and fixed point) traced
    afterwards runs as ``False`` does, with its numbers; ``True`` still compiles. (The
    plans are decided while tracing: only the solves compared with ``False`` run.)"""
    layer = dense_dynamics()
    y0 = tf.constant(np.random.RandomState(4).randn(3, 4))
    weight = tf.constant(0.5 * np.random.RandomState(5).randn(4, 4) / 4)

    def traced(jit):
        box = {}

        @tf.function
        def run():
            ode = ki.ops.odeint(lambda t, y: layer(y, t=t), y0, [0.0, 1.0], jit_dynamics=jit)
            fixed = ki.ops.fixed_point(lambda z, x: tf.tanh(z @ weight + x), y0,
                                       tf.zeros_like(y0), tol=1e-10, jit_cell=jit)
            box["kinds"] = (ode.stats.compiled, fixed.stats.compiled)
            return ode.states[-1], fixed.z

        run.get_concrete_function()
        return box["kinds"], run

    assert ki.config.is_auto_jit_enabled()
    assert traced("auto")[0] == ("solve", "solve")
    reference = [v.numpy() for v in traced(False)[1]()]
    ki.config.disable_auto_jit()
    try:
        assert not ki.config.is_auto_jit_enabled()
        kinds, run = traced("auto")
        assert kinds == ("none", "none")
        for a, b in zip(reference, run()):
            np.testing.assert_array_equal(b.numpy(), a)
        assert traced(True)[0] == ("dynamics", "cell")
        layer_config = ki.layers.NeuralODE(ki.layers.ConcatDense(4)).get_config()
        assert layer_config["jit_dynamics"] == "auto"  # configs keep it
    finally:
        ki.config.enable_auto_jit()
    assert ki.config.is_auto_jit_enabled()
    assert traced("auto")[0] == ("solve", "solve")
