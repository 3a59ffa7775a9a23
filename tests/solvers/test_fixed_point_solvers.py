"""Fixed-point solvers against exact fixed points; iteration counts; stopping; the registry."""

import re

import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit.solvers import anderson, fixed_point_base
from keras_implicit.solvers import state as state_ops
from keras_implicit.solvers.status import Status
from keras_implicit.solvers.anderson import Anderson
from keras_implicit.solvers.broyden import Broyden
from keras_implicit.solvers.picard import Picard

pytestmark = pytest.mark.plain_graph  # numerics in TensorFlow's graph (tests/conftest.py)


SOLVERS = ["picard", "anderson", "broyden"]


def linear_problem(dim=6, batch=4, norm=0.5, seed=0):
    """z = z W + x U with ||W||_2 = norm < 1; z* = x U (I - W)^-1, float64."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(dim, dim))
    w *= norm / np.linalg.norm(w, 2)
    u = rng.normal(size=(dim, dim))
    x = rng.normal(size=(batch, dim))
    exact = x @ u @ np.linalg.inv(np.eye(dim) - w)
    return (lambda z: z @ tf.constant(w) + tf.constant(x @ u)), exact


def tanh_problem(top=0.95, seed=0, dtype=tf.float64):
    """tanh(z W + x U + b) with W symmetric, eigenvalues spread over [-0.5, top]:
    slow for Picard (rate near ``top``), where Krylov-like methods gain most."""
    rng = np.random.default_rng(seed)
    dim, batch = 32, 8
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    w = q @ np.diag(np.linspace(-0.5, top, dim)) @ q.T
    u = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    x = rng.normal(size=(batch, dim))
    b = 0.1 * rng.normal(size=(dim,))
    w, xu_b = tf.constant(w, dtype), tf.constant(x @ u + b, dtype)
    return lambda z: tf.tanh(z @ w + xu_b), tf.zeros([batch, dim], dtype)


def test_solvers_find_the_exact_linear_fixed_point():
    fn, exact = linear_problem()
    for name in SOLVERS:
        for stop_mode in ("rel", "abs"):
            z, stats = fixed_point_base.get(name).solve(
                fn, tf.zeros(exact.shape, tf.float64), tol=1e-11, max_iter=500,
                stop_mode=stop_mode)
            np.testing.assert_allclose(z.numpy(), exact, rtol=0, atol=1e-9, err_msg=name)
            assert int(stats.status) == Status.SUCCESS
            assert bool(stats.converged)
            residual = stats.rel_residual if stop_mode == "rel" else stats.abs_residual
            assert float(residual) <= 1e-11
            assert 1 < int(stats.iterations) < 500


def test_every_sample_meets_the_tolerance():
    """Per-sample convergence: the batch mixes an easy sample (z* = 0) with hard ones;
    the stats report the worst sample and every returned sample meets tol."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(5, 5))
    w = tf.constant(w * 0.9 / np.linalg.norm(w, 2))
    x = rng.normal(size=(3, 5)) * np.array([[0.0], [1.0], [100.0]])
    x = tf.constant(x)
    fn = lambda z: tf.sin(z @ w) + x  # noqa: E731
    tol = 1e-8
    for name in SOLVERS:
        z, stats = fixed_point_base.get(name).solve(fn, tf.zeros_like(x), tol=tol,
                                                    max_iter=300, stop_mode="abs")
        per_sample = np.linalg.norm((fn(z) - z).numpy(), axis=1)
        assert np.all(per_sample <= 2 * tol), (name, per_sample)
        np.testing.assert_array_equal(z.numpy()[0], 0.0)
        assert int(stats.status) == 0 and float(stats.abs_residual) <= tol
        # The reported residual is the best iterate's; the solver returns its image,
        # one contraction step closer.
        assert per_sample.max() <= float(stats.abs_residual)


def test_anderson_and_broyden_need_fewer_iterations_than_picard():
    """Counts on this seeded problem (tol 1e-8, float64): picard 46, anderson 20, broyden 18."""
    counts = {}
    for name in SOLVERS:
        fn, z0 = tanh_problem()
        _, stats = fixed_point_base.get(name).solve(fn, z0, tol=1e-8, max_iter=500)
        assert int(stats.status) == 0, name
        counts[name] = int(stats.iterations)
    print("iterations to tol 1e-8:", counts)
    assert counts["anderson"] < 0.7 * counts["picard"], counts
    assert counts["broyden"] < 0.7 * counts["picard"], counts


def test_failed_solves_stop_with_their_status():
    for name in SOLVERS:
        solver = fixed_point_base.get(name)
        # log of a negative number: NaN at the second evaluation.
        z, stats = solver.solve(tf.math.log, tf.fill([2, 3], 0.5), tol=1e-6, max_iter=1000)
        assert int(stats.status) == Status.NON_FINITE, name
        assert int(stats.iterations) == 2 and not bool(stats.converged)
        assert np.all(np.isfinite(z.numpy())), "the best finite iterate is returned"
        # No fixed point at all: runs to max_iter.
        _, stats = solver.solve(lambda z: z + 1.0, tf.zeros([2, 3]), tol=1e-6, max_iter=17,
                                stop_mode="abs")
        assert int(stats.status) == Status.MAX_STEPS_REACHED, name
        assert int(stats.iterations) == 17
        np.testing.assert_allclose(float(stats.abs_residual), np.sqrt(3.0), rtol=1e-5)
        # max_iter=1: the image of z0.
        fn, _ = linear_problem()
        z0 = tf.ones([4, 6], tf.float64)
        z, stats = solver.solve(fn, z0, tol=1e-12, max_iter=1)
        np.testing.assert_allclose(z.numpy(), fn(z0).numpy())
        assert int(stats.iterations) == 1 and int(stats.status) == 1
    # z -> 2z + 1 diverges; in float32 it overflows after ~128 steps, far before max_iter
    # (the relative residual stays 1/2: the norms must not overflow before the iterates).
    _, stats = Picard().solve(lambda z: 2.0 * z + 1.0, tf.zeros([1, 2]), tol=1e-6,
                              max_iter=100_000)
    assert int(stats.status) == Status.NON_FINITE
    assert 100 < int(stats.iterations) < 200


def test_solver_traces_with_unknown_batch_size():
    """Graph mode with a dynamic batch (every solver runs in graphs in tests/ops and
    tests/layers too)."""
    fn, exact = linear_problem(batch=3)

    @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float64)])
    def solve(z0):
        z, stats = Anderson().solve(fn, z0, tol=1e-10, max_iter=200)
        return z, stats.iterations

    z, iterations = solve(tf.zeros([3, 6], tf.float64))
    np.testing.assert_allclose(z.numpy(), exact, atol=1e-8)
    assert int(iterations) > 1


@pytest.mark.parametrize("memory", [1, 2, 3, 7])
def test_anderson_of_every_memory_solves_in_a_graph(memory):
    """memory=2 failed in every tf.function: Grappler's arithmetic optimizer rewrote the
    slice of the Gram row (a stack of two) into a tensor of the wrong rank. Eager ran."""
    fn, exact = linear_problem()

    @tf.function
    def solve(z0):
        z, stats = Anderson(memory=memory).solve(fn, z0, tol=1e-11, max_iter=500)
        return z, stats.status

    z, status = solve(tf.zeros(exact.shape, tf.float64))
    np.testing.assert_allclose(z.numpy(), exact, rtol=0, atol=1e-9)
    assert int(status) == Status.SUCCESS


@pytest.mark.parametrize("solver_class", [Anderson, Broyden])
def test_a_memory_beyond_max_iter_follows_the_iterates_of_max_iter(solver_class):
    """A solve updates at most max_iter times, so memory=10**6 allocated a history (and for
    Anderson a Gram matrix of 10**12 entries per sample) that could never fill: it ran out
    of memory. It now runs with max_iter slots, eagerly, in a graph and under XLA."""
    fn, z0 = tanh_problem(top=0.9)
    huge, bounded = solver_class(memory=10**6), solver_class(memory=8)
    assert bounded.bounded(8) is bounded and huge.bounded(8).memory == 8
    assert huge.bounded(8).get_config() == bounded.get_config()
    z_ref, s_ref = bounded.solve(fn, z0, tol=1e-10, max_iter=8)
    runs = [lambda z: huge.solve(fn, z, tol=1e-10, max_iter=8),
            tf.function(lambda z: huge.solve(fn, z, tol=1e-10, max_iter=8)),
            _xla(lambda z: huge.solve(fn, z, tol=1e-10, max_iter=8))]
    for run in runs:
        z, stats = run(z0)
        assert int(stats.iterations) == int(s_ref.iterations) > 5
        np.testing.assert_allclose(z.numpy(), z_ref.numpy(), rtol=0, atol=1e-12)
    assert Picard().bounded(3).get_config() == Picard().get_config()


def test_anderson_with_memory_one_is_damped_picard():
    fn, z0 = tanh_problem(top=0.5)
    z_p, s_p = Picard(damping=0.7).solve(fn, z0, tol=1e-9, max_iter=400)
    z_a, s_a = Anderson(memory=1, damping=0.7).solve(fn, z0, tol=1e-9, max_iter=400)
    assert int(s_p.iterations) == int(s_a.iterations) > 10
    np.testing.assert_allclose(z_a.numpy(), z_p.numpy(), atol=1e-12)


def test_registry_names_dicts_and_instances():
    assert isinstance(fixed_point_base.get("anderson"), Anderson)
    solver = fixed_point_base.get({"name": "broyden", "memory": 4})
    assert isinstance(solver, Broyden) and solver.memory == 4
    instance = Picard(damping=0.5)
    assert fixed_point_base.get(instance) is instance
    registry = fixed_point_base.FIXED_POINT_SOLVERS
    for solver in (Anderson(memory=3, regularization=0.0, damping=0.9), Broyden(), Picard()):
        assert registry.get(ki.serialization.serialize(solver)) == solver
    assert ki.serialization.serialize(Anderson()) == "anderson"
    with pytest.raises(ValueError, match=r"Valid names: \['anderson', 'broyden', 'picard'\]"
                                         r".*Received: solver='newton'"):
        fixed_point_base.get("newton")
    with pytest.raises(ValueError, match="Invalid options for the fixed-point solver 'picard'"):
        fixed_point_base.get({"name": "picard", "memory": 3})
    with pytest.raises(ValueError, match="needs a 'name' key"):
        fixed_point_base.get({"memory": 3})
    with pytest.raises(TypeError, match="Received: solver=3"):
        fixed_point_base.get(3)


def test_bad_options_and_arguments():
    for make, message in [
        (lambda: Anderson(memory=0), "memory=0"),
        (lambda: Anderson(regularization=-1.0), "regularization=-1.0"),
        (lambda: Anderson(damping=0.0), "damping=0.0"),
        (lambda: Picard(damping=1.5), "damping=1.5"),
        (lambda: Broyden(memory=2.5), "memory=2.5"),
    ]:
        with pytest.raises(ValueError, match=message):
            make()
    fn, _ = linear_problem()
    for kwargs, message in [
        ({"tol": 0.0}, "Received: tol=0.0"),
        ({"tol": -1e-3}, "Received: tol=-0.001"),
        ({"tol": float("nan")}, "Received: tol=nan"),
        ({"max_iter": 0}, "Received: max_iter=0"),
        ({"max_iter": 2.0}, "Received: max_iter=2.0"),
        ({"stop_mode": "max"}, "Received: stop_mode='max'"),
    ]:
        with pytest.raises(ValueError, match=message):
            Anderson().solve(fn, tf.zeros([4, 6], tf.float64), **kwargs)


def _xla(fn):
    def traced(*args):
        with state_ops.tracing_for_xla():
            return fn(*args)

    return tf.function(traced, jit_compile=True, autograph=False)


@pytest.mark.parametrize("name", SOLVERS)
def test_compiled_iterations_and_solves_give_the_same_fixed_point(name):
    """The shared driver compiled per step, per iteration or as a whole solve (as
    ``ops.jit`` does) follows the same iterates in float64."""
    fn, z0 = tanh_problem(top=0.8)
    solver = fixed_point_base.get(name)
    assert solver.fusable
    z_ref, s_ref = solver.solve(fn, z0, tol=1e-10, max_iter=300)
    runs = [tf.function(lambda z: solver.solve(fn, z, tol=1e-10, max_iter=300,
                                               step_wrapper=_xla)),
            tf.function(lambda z: solver.solve(fn, z, tol=1e-10, max_iter=300,
                                               iteration_wrapper=_xla)),
            _xla(lambda z: solver.solve(fn, z, tol=1e-10, max_iter=300))]
    for run in runs:
        z, stats = run(z0)
        assert int(stats.iterations) == int(s_ref.iterations)
        assert int(stats.status) == Status.SUCCESS
        np.testing.assert_allclose(z.numpy(), z_ref.numpy(), rtol=0, atol=1e-12)


def test_a_compiled_anderson_loop_does_not_copy_its_history():
    """Under XLA the history is a ring written one slot per iteration. The tuples the
    graph shifts made XLA copy all 2 m = 10 of them at every iteration (42 copies in the
    optimized program before), and hold the history twice."""
    fn, exact = linear_problem(dim=7, batch=3)
    z0 = tf.zeros_like(exact)
    solve = _xla(lambda z: Anderson(memory=5).solve(fn, z, tol=1e-10, max_iter=40))
    hlo = solve.experimental_get_compiler_ir(z0)(stage="optimized_hlo")
    history_copies = re.findall(r"= f64\[3,(?:5,)?7\]\{[0-9,]*\} copy\(", hlo)
    # Left: copies of z0 and of the zeros the rings start from, before the loop.
    assert len(history_copies) < 5, len(history_copies)
    z, stats = solve(z0)
    assert int(stats.status) == Status.SUCCESS and int(stats.iterations) > 5  # wrapped round
    np.testing.assert_allclose(z.numpy(), exact, rtol=0, atol=1e-9)


@pytest.mark.parametrize("m", [5, anderson._UNROLLED_MAX, anderson._UNROLLED_MAX + 1, 30])
def test_anderson_least_squares_unrolled_for_xla_matches_cholesky(m):
    """Unrolled under XLA up to _UNROLLED_MAX (compiling m³/6 operations took minutes for
    a training step at m = 30), TensorFlow's Cholesky beyond."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(7, m, m))
    a = tf.constant(a @ a.transpose(0, 2, 1) + np.eye(m))
    b = tf.constant(rng.normal(size=(7, m)))
    expected = np.linalg.solve(a.numpy(), b.numpy()[..., None])[..., 0]
    np.testing.assert_allclose(anderson._spd_solve(a, b).numpy(), expected, rtol=1e-9)
    with state_ops.tracing_for_xla():
        assert state_ops.in_xla()
        np.testing.assert_allclose(anderson._spd_solve(a, b).numpy(), expected, rtol=1e-9)
    assert not state_ops.in_xla()


@pytest.mark.parametrize("dim", [1, 2, 8])
def test_anderson_without_regularization_converges_with_more_residuals_than_dimensions(dim):
    """regularization=0 (accepted) made the Cholesky factor NaN once the residuals were
    linearly dependent, as more than dim of them always are: status NON_FINITE on a
    contraction of rate 1/2. A relative floor keeps the system positive definite."""
    x = tf.constant(np.random.default_rng(0).normal(size=(2, dim)))

    def fn(z):
        return 0.5 * tf.tanh(z) + x

    for run in (lambda f: f(), lambda f: tf.function(f)(), lambda f: _xla(f)()):
        z, stats = run(lambda: Anderson(regularization=0.0).solve(
            fn, tf.zeros_like(x), tol=1e-11, max_iter=100))
        assert int(stats.status) == Status.SUCCESS
        np.testing.assert_allclose(z.numpy(), fn(z).numpy(), rtol=0, atol=1e-10)


def test_a_solver_with_its_own_loop_is_not_fusable():
    class Halving(fixed_point_base.FixedPointSolver):
        name = "halving"

        def solve(self, fn, z0, *, tol=1e-4, max_iter=50, stop_mode="rel"):
            return fn(z0), None

    assert not Halving().fusable
    assert all(fixed_point_base.get(name).fusable for name in SOLVERS)
