"""Every public layer, cell, solver, controller and gradient strategy through one Keras contract:
config round trip, Sequential use and a training step, ``.keras`` in safe mode, SavedModel."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit.solvers import runge_kutta
from keras_implicit.testing.layer_contract import run_layer_contract

# A user's own tableau (Bogacki–Shampine's coefficients under a new name) and one that is
# named like a shipped tableau but is not it: both must be saved in full.
MY_TABLEAU = ki.solvers.ButcherTableau.from_config(
    {**runge_kutta.BOGACKI_SHAMPINE.get_config(), "name": "my_bs3"})
IMPOSTOR = ki.solvers.ButcherTableau.from_config(
    {**runge_kutta.BOGACKI_SHAMPINE.get_config(), "name": "dopri5"})


@ki.solvers.register("doubled_midpoint")
class DoubledMidpoint(ki.solvers.FixedGridRungeKutta):
    """A user's solver class: the midpoint rule with twice the steps asked for."""

    name = "doubled_midpoint"

    def __init__(self, factor=2):
        super().__init__(runge_kutta.MIDPOINT)
        self.name = "doubled_midpoint"
        self.factor = factor

    def get_config(self):
        return {"factor": self.factor}

    def integrate(self, fn, y0, times, options, **kwargs):
        return super().integrate(fn, y0, times, options._replace(
            num_steps=options.num_steps * self.factor,
            max_num_steps=options.max_num_steps * self.factor), **kwargs)


@keras.saving.register_keras_serializable(package="keras_implicit_tests")
class HalfPicard(ki.solvers.Picard):
    """A user's fixed-point solver registered with Keras only."""

    def __init__(self):
        super().__init__(damping=0.5)

    def get_config(self):
        return {}


def dense_dynamics():
    return ki.layers.ConcatDense(3, activation="tanh")


ODE_CASES = {
    "dopri5_adjoint": {},
    "bosh3_backprop": {"solver": "bosh3", "gradient": "backprop"},
    "dopri5_checkpointed": {"gradient": ki.ops.Checkpointed(checkpoints=2)},
    "rk4_adjoint": {"solver": "rk4", "num_steps": 3},
    "midpoint_backprop": {"solver": "midpoint", "num_steps": 3, "gradient": "backprop"},
    "euler_checkpointed": {"solver": "euler", "num_steps": 4, "gradient": "checkpointed"},
    "tfp_dopri5": {"solver": "tfp_dopri5"},
    "bdf": {"solver": {"name": "bdf", "max_order": 3}},
    "adjoint_options": {"gradient": ki.ops.Adjoint(rtol=1e-4, atol=1e-5, normalize=True)},
    "pid": {"step_control": ki.solvers.PIDController(pcoeff=0.2, icoeff=0.7, max_step=0.5)},
    "jump_times": {"step_control": ki.solvers.IController(jump_times=[0.5])},
    "custom_tableau": {"solver": ki.solvers.AdaptiveRungeKutta(MY_TABLEAU)},
    "impostor_tableau": {"solver": ki.solvers.AdaptiveRungeKutta(IMPOSTOR)},
    "custom_solver_class": {"solver": DoubledMidpoint(), "num_steps": 2},
}


# A training step (a gradient trace) where the case is about the gradient.
TRAINED = {"dopri5_adjoint", "bosh3_backprop", "dopri5_checkpointed", "rk4_adjoint",
           "euler_checkpointed", "tfp_dopri5", "adjoint_options", "custom_solver_class"}

# The cases that keep jit "auto" (the whole solve compiled: adaptive, fixed grid, a user's
# solver class; the DEQ's Anderson solve), with the building blocks and float64 below. The
# others run in TensorFlow's graph (tests/conftest.py): under a taped gradient or a TFP
# solver "auto" is that graph anyway, and the compiled solve's numbers with another
# tableau, each step controller, the adjoint's options and each fixed-point solver are
# compared with the graph's in tests/ops/test_compile_policy.py and
# test_fixed_point_compile.py.
ODE_DEFAULTS = {"dopri5_adjoint", "rk4_adjoint", "custom_solver_class"}
DEQ_DEFAULTS = {"anderson_implicit"}


def cases(names, defaults):
    return [pytest.param(name, marks=() if name in defaults else pytest.mark.plain_graph)
            for name in sorted(names)]


@pytest.mark.parametrize("name", cases(ODE_CASES, ODE_DEFAULTS))
def test_neural_ode_with_every_solver_controller_and_gradient(name):
    options = ODE_CASES[name]
    model = run_layer_contract(lambda: ki.layers.NeuralODE(dense_dynamics(), **options), (3,),
                               export_rtol=1e-3, train=name in TRAINED,
                               export=name != "bdf")  # bdf: see the next test
    layer = model.layers[0]
    if name == "impostor_tableau":
        config = layer.get_config()["solver"]
        assert isinstance(config, dict) and config["config"]["tableau"]["name"] == "dopri5"
        restored = ki.serialization.deserialize(config, "ode_solver")
        assert restored.tableau == IMPOSTOR and restored.tableau != runge_kutta.DORMAND_PRINCE


def test_bdf_names_the_static_shape_it_needs_when_exported_with_an_unknown_batch():
    layer = ki.layers.NeuralODE(dense_dynamics(), solver="bdf")
    traced = tf.function(layer, input_signature=[tf.TensorSpec((None, 3), tf.float32)])
    with pytest.raises(ValueError, match="static shape.*Received: state shape"):
        traced.get_concrete_function()


DEQ_CASES = {
    "anderson_implicit": {},
    "broyden_phantom": {"solver": "broyden", "gradient": ki.ops.Phantom(steps=2, damping=0.8)},
    "picard_unrolled": {"solver": {"name": "picard", "damping": 0.9}, "gradient": "unrolled",
                        "max_iter": 30},
    "implicit_options": {"gradient": ki.ops.Implicit(solver="picard", tol=1e-5, max_iter=80)},
    "custom_solver_class": {"solver": HalfPicard(), "max_iter": 80},
}


@pytest.mark.parametrize("name", cases(DEQ_CASES, DEQ_DEFAULTS))
def test_deq_with_every_solver_and_gradient(name):
    options = DEQ_CASES[name]
    run_layer_contract(lambda: ki.layers.DEQ(ki.layers.DEQDenseCell(), state_shape=(4,),
                                             on_failure="ignore", **options), (3,))


@pytest.mark.parametrize("make,input_shape", [
    (lambda: ki.layers.ConcatDense(3, activation="tanh"), (3,)),
    (lambda: ki.layers.ConcatConv2D(2, 3), (4, 4, 2)),
    (lambda: ki.layers.ConcatMLP((4,)), (3,)),
    (lambda: ki.applications.ODEBlockDynamics(4, groups=2), (3, 3, 4)),
    (lambda: ki.applications.ResidualBlock(4, groups=2), (3, 3, 4)),
    (lambda: ki.layers.NeuralODE(ki.applications.ODEBlockDynamics(4, groups=2), solver="rk4",
                                 num_steps=2), (3, 3, 4)),
    (lambda: ki.layers.DEQ(ki.layers.DEQConvCell(4, groups=2), on_failure="ignore"),
     (4, 4, 2)),
], ids=["ConcatDense", "ConcatConv2D", "ConcatMLP", "ODEBlockDynamics", "ResidualBlock",
        "NeuralODE_conv", "DEQ_conv"])
def test_building_blocks_and_cells(make, input_shape):
    run_layer_contract(make, input_shape)


def test_float64_neural_ode():
    run_layer_contract(lambda: ki.layers.NeuralODE(
        ki.layers.ConcatDense(3, activation="tanh", dtype="float64"), rtol=1e-8, atol=1e-8,
        dtype="float64"), (3,), dtype="float64")


def test_models_keep_their_outputs_through_keras_files(tmp_path):
    x = np.random.RandomState(0).randn(4, 2).astype("float32")
    flow = ki.models.ContinuousFlow(hidden_units=(4,), trace="exact", rtol=1e-5, atol=1e-5,
                                    gradient=ki.ops.Checkpointed(), seed=0)
    expected = flow.log_prob(x).numpy()
    path = str(tmp_path / "flow.keras")
    flow.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.log_prob(x).numpy(), expected, rtol=1e-6)
    assert isinstance(loaded.bijectors[0].options.gradient, ki.ops.Checkpointed)

    data = ki.datasets.spirals(3, num_points=10, noise=0.1, seed=0)
    inputs = {k: data[k] for k in ("observations", "times", "mask")}
    latent = ki.models.LatentODE(obs_dim=2, latent_dim=2, hidden_units=4,
                                 step_control=ki.solvers.PIDController(pcoeff=0.2, icoeff=0.7))
    latent.compile("adam")
    expected = latent.predict(inputs, verbose=0)
    path = str(tmp_path / "latent.keras")
    latent.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0), expected, rtol=1e-6)
    assert loaded.latent_ode.step_control == latent.latent_ode.step_control


def test_configs_never_raise_for_a_user_class_keras_does_not_know():
    class Unregistered(ki.solvers.Picard):
        pass

    layer = ki.layers.DEQ(ki.layers.DEQDenseCell(), solver=Unregistered())
    config = layer.get_config()  # must not raise
    assert config["solver"]["class_name"] == "Unregistered"
    with pytest.raises(ValueError, match="Cannot rebuild `solver`"):
        ki.layers.DEQ.from_config(config)


def test_registered_names_reach_every_kind():
    assert {"dopri5", "bosh3", "rk4", "midpoint", "euler", "tfp_dopri5", "bdf",
            "doubled_midpoint"} <= set(ki.solvers.ODE_SOLVERS)
    for kind, name in [("fixed_point_solver", "anderson"), ("step_controller", "pid"),
                       ("ode_gradient", "checkpointed"), ("fixed_point_gradient", "phantom")]:
        instance = ki.serialization.get(kind, name)
        assert ki.serialization.serialize(instance) == name
    with pytest.raises(ValueError, match="Valid kinds"):
        ki.serialization.get("integrator", "dopri5")
