"""Test configuration: two logical CPU devices (for MirroredStrategy tests), data path."""

import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One intra-op thread per process: pytest-xdist already runs one worker per core, and
# TensorFlow's default (a thread per core in every worker, and in the worker processes the
# distribution tests start, which inherit this) spent CPU on contention: the layer contract
# and compile-policy modules took 254 and 261 user CPU-seconds against 290 and 277 (two A/B
# pairs on 2 cores, 2026-12-02).
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

# Property-based tests: "ci" (default, 6 examples) keeps each property to a few seconds;
# "thorough" (200 examples) takes minutes per property; "long" (2,000) is the full run:
# HYPOTHESIS_PROFILE=long pytest tests/ops/test_solver_properties.py -n 2
# No deadline: the first example of a property traces TensorFlow functions.
# "ci" does not shrink a failure: each shrinking step re-traces TensorFlow functions,
# which took CI over 20 minutes on one example; the unshrunk example is reported.
settings.register_profile("ci", max_examples=6, deadline=None, derandomize=True,
                          phases=(Phase.explicit, Phase.reuse, Phase.generate),
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Logical devices must be configured before TensorFlow initialises its runtime,
# that is before any test runs an op.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

_REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_path():
    """The MNIST directory: $KERAS_IMPLICIT_DATA or ../shared/data/mnist; skips if absent."""
    path = os.environ.get("KERAS_IMPLICIT_DATA") or str(_REPO.parent / "shared" / "data" / "mnist")
    if not pathlib.Path(path).exists():
        pytest.skip(f"MNIST not found at {path}; set KERAS_IMPLICIT_DATA")
    return path


@pytest.fixture(scope="session")
def two_device_strategies():
    """``(OneDeviceStrategy, MirroredStrategy)`` over the two logical CPUs.

    One MirroredStrategy for the whole session: each new strategy restarts its
    collective instance keys, and TensorFlow's runtime rejects a key reused with
    another dtype ("Collective instance 100 expected ... data_type").
    """
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2
    return (tf.distribute.OneDeviceStrategy(devices[0]),
            tf.distribute.MirroredStrategy(devices))


@pytest.fixture(autouse=True)
def _auto_jit_per_marker(request):
    """``@pytest.mark.plain_graph`` (on a module or a test): ``"auto"`` compiles nothing
    (``ki.config.disable_auto_jit``), which spares each traced solve its XLA compilation;
    ``plain_graph(False)`` on a test of such a module keeps the defaults.

    The modules whose subject is numerics, Keras use, checkpoints or files carry it, and
    so do the layer contract's cases whose compiled solve is compared with the graph's
    elsewhere. ``tests/ops/test_compile_policy.py`` and ``test_fixed_point_compile.py``
    check that every path gives the same numbers; the contract's focused cases, the
    mixed-precision numerics and README example, the strategies' tests of NeuralODE and
    DEQ, the two-worker cluster, and the reliability, events, README and CLI tests run the
    defaults."""
    import keras_implicit as ki

    marker = request.node.get_closest_marker("plain_graph")
    plain = marker is not None and (marker.args[0] if marker.args else True)
    if plain:
        ki.config.disable_auto_jit()
    try:
        yield
    finally:
        ki.config.enable_auto_jit()


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    import keras

    # free_memory=False skips a gc.collect() per test (~0.4 s CPU each).
    keras.utils.clear_session(free_memory=False)
    keras.utils.set_random_seed(0)
    yield
