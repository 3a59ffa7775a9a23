"""fixed_point: exact fixed points and gradients (float64), IFT vs unrolled vs finite
differences, failure reporting, bad input."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit.ops import FixedPointWarning

pytestmark = pytest.mark.plain_graph  # numerics in TensorFlow's graph (tests/conftest.py)


SOLVERS = ["picard", "anderson", "broyden"]


class Linear:
    """f(z, x) = z W + x U (row vectors) with ||W||_2 < 1, and L = sum(c * z*).

    z* = x U A with A = (I - W)^-1; dL/dz* = c, so with g = c A^T:
    dL/dx = g U^T, dL/dU = x^T g, dL/dW = z*^T g.
    """

    def __init__(self, dim=5, batch=3, norm=0.4, seed=0):
        rng = np.random.default_rng(seed)
        w = rng.normal(size=(dim, dim))
        self.w_np = w * norm / np.linalg.norm(w, 2)
        self.u_np = rng.normal(size=(dim, dim))
        self.x_np = rng.normal(size=(batch, dim))
        self.c = rng.normal(size=(batch, dim))
        self.w, self.u = tf.Variable(self.w_np), tf.Variable(self.u_np)
        self.x = tf.constant(self.x_np)
        a = np.linalg.inv(np.eye(dim) - self.w_np)
        self.z_star = self.x_np @ self.u_np @ a
        g = self.c @ a.T
        self.grads = [g @ self.u_np.T, self.z_star.T @ g, self.x_np.T @ g]

    def fn(self, z, x):
        return z @ self.w + x @ self.u

    def solve(self, **kwargs):
        with tf.GradientTape() as tape:
            tape.watch(self.x)
            result = ki.ops.fixed_point(self.fn, self.x, tf.zeros_like(self.x), **kwargs)
            loss = tf.reduce_sum(result.z * self.c)
        return result, tape.gradient(loss, [self.x, self.w, self.u])


def test_linear_cell_every_solver_and_backward_solver_match_closed_form():
    """Each solver forward with each as the backward solver (the backward one defaults to
    the forward one; the pairs are independent, so the diagonal and one mixed pair cover
    them), then backpropagation through every iteration."""
    problem = Linear()
    pairs = [(solver, solver) for solver in SOLVERS] + [("picard", "broyden")]
    for solver, backward_solver in pairs:
        result, grads = problem.solve(solver=solver,
                                      gradient=ki.ops.Implicit(solver=backward_solver),
                                      tol=1e-12, max_iter=300)
        label = f"{solver}/{backward_solver}"
        np.testing.assert_allclose(result.z.numpy(), problem.z_star, atol=1e-10, err_msg=label)
        for got, exact in zip(grads, problem.grads):
            np.testing.assert_allclose(got.numpy(), exact, atol=1e-9, err_msg=label)
        stats = result.stats
        assert bool(stats.converged) and int(stats.backward_status) == 0
        assert int(stats.forward_iterations) > 1 and int(stats.backward_iterations) > 1
    for solver in SOLVERS:
        result, grads = problem.solve(solver=solver, tol=1e-12, max_iter=300, gradient="unrolled")
        for got, exact in zip(grads, problem.grads):
            np.testing.assert_allclose(got.numpy(), exact, atol=1e-9, err_msg=f"{solver} unrolled")
        assert result.stats.backward_iterations is None


def test_phantom_gradient():
    """One damped step z = (1 - a) z* + a f(z*, x) from the (constant) z*: dL/dx = a c U^T,
    dL/dW = a z*^T c, dL/dU = a x^T c. Many undamped steps tend to the IFT gradient."""
    problem = Linear()
    a = 0.6
    result, grads = problem.solve(tol=1e-12, max_iter=300, gradient=ki.ops.Phantom(damping=a))
    c = problem.c
    exact = [a * c @ problem.u_np.T, a * problem.z_star.T @ c, a * problem.x_np.T @ c]
    for got, want in zip(grads, exact):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-10)
    np.testing.assert_allclose(result.z.numpy(), problem.z_star, atol=1e-10)
    assert int(result.stats.backward_iterations) == 1
    result, grads = problem.solve(tol=1e-12, max_iter=300, gradient=ki.ops.Phantom(steps=80))
    for got, want in zip(grads, problem.grads):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-9)


class Tanh:
    """f(z, x) = tanh(z W + x U + b), float64, contractive (||W||_2 = 0.8)."""

    def __init__(self, dim=4, batch=2, seed=3):
        rng = np.random.default_rng(seed)
        w = rng.normal(size=(dim, dim))
        self.w = tf.Variable(w * 0.8 / np.linalg.norm(w, 2))
        self.u = tf.Variable(rng.normal(size=(dim, dim)))
        self.b = tf.Variable(rng.normal(size=(dim,)))
        self.x = tf.constant(rng.normal(size=(batch, dim)))
        self.c = tf.constant(rng.normal(size=(batch, dim)))

    def fn(self, z, x):
        return tf.tanh(z @ self.w + x @ self.u + self.b)

    def loss(self, x, **kwargs):
        z = ki.ops.fixed_point(self.fn, x, tf.zeros_like(x), tol=1e-13, max_iter=500,
                               **kwargs).z
        return tf.reduce_sum(self.c * z ** 2)

    def gradients(self, **kwargs):
        with tf.GradientTape() as tape:
            tape.watch(self.x)
            loss = self.loss(self.x, **kwargs)
        return tape.gradient(loss, [self.x, self.w, self.b])


def test_tanh_cell_implicit_gradient_matches_unrolled_and_finite_differences():
    problem = Tanh()
    implicit = problem.gradients()
    unrolled = problem.gradients(gradient="unrolled")
    graph = tf.function(lambda: problem.gradients(solver="broyden"))()
    for a, b, c in zip(implicit, unrolled, graph):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-10)
        np.testing.assert_allclose(a.numpy(), c.numpy(), atol=1e-10)
    # Central differences on entries of x, W and b.
    eps = 1e-6
    loss = tf.function(lambda x: problem.loss(x, solver="broyden"))
    x_np = problem.x.numpy()

    def numeric(variable, index):
        values = []
        for sign in (1.0, -1.0):
            if variable is None:
                shifted = x_np.copy()
                shifted[index] += sign * eps
                values.append(float(loss(tf.constant(shifted))))
            else:
                variable[index].assign(variable[index] + sign * eps)
                values.append(float(loss(problem.x)))
                variable[index].assign(variable[index] - sign * eps)
        return (values[0] - values[1]) / (2 * eps)

    for variable, grad, index in [(None, implicit[0], (0, 1)), (None, implicit[0], (1, 3)),
                                  (problem.w, implicit[1], (1, 2)),
                                  (problem.b, implicit[2], (0,))]:
        assert abs(numeric(variable, index) - grad.numpy()[index]) < 1e-7, index


@pytest.mark.parametrize("gradient", ["implicit", "phantom", "unrolled"])
def test_jit_cell_gives_the_same_gradients(gradient):
    problem = Tanh()
    plain = problem.gradients(gradient=gradient)
    jitted = tf.function(lambda: problem.gradients(gradient=gradient, jit_cell=True))()
    for a, b in zip(plain, jitted):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-12)
    with pytest.raises(TypeError, match="Received: jit_cell=1"):
        problem.gradients(jit_cell=1)


def test_z0_gets_zero_gradient_and_nested_inputs_get_theirs():
    problem = Linear()
    half = problem.x_np.shape[1] // 2
    inputs = {"a": tf.constant(problem.x_np[:, :half]), "b": tf.constant(problem.x_np[:, half:]),
              "scale": tf.constant(1, tf.int32)}
    z0 = tf.ones_like(problem.x)

    def fn(z, x):
        joined = tf.concat([x["a"], x["b"]], axis=1) * tf.cast(x["scale"], z.dtype)
        return problem.fn(z, joined)

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([inputs["a"], inputs["b"], z0])
        result = ki.ops.fixed_point(fn, inputs, z0, tol=1e-12, max_iter=300)
        loss = tf.reduce_sum(result.z * problem.c)
    grad_a, grad_b, grad_z0 = tape.gradient(loss, [inputs["a"], inputs["b"], z0])
    np.testing.assert_allclose(grad_a.numpy(), problem.grads[0][:, :half], atol=1e-9)
    np.testing.assert_allclose(grad_b.numpy(), problem.grads[0][:, half:], atol=1e-9)
    np.testing.assert_array_equal(grad_z0.numpy(), 0.0)


def test_state_of_another_shape_and_rank():
    """z of shape (batch, 2, 3) driven by x of shape (batch, 4): residuals per sample."""
    rng = np.random.default_rng(2)
    w = tf.constant(rng.normal(size=(6, 6)) * 0.1)
    u = tf.constant(rng.normal(size=(4, 6)))
    x = tf.constant(rng.normal(size=(5, 4)))

    def fn(z, x):
        flat = tf.reshape(z, [-1, 6])
        return tf.reshape(tf.tanh(flat @ w + x @ u), [-1, 2, 3])

    result = ki.ops.fixed_point(fn, x, tf.zeros([5, 2, 3], tf.float64), tol=1e-12)
    assert result.z.shape == (5, 2, 3)
    np.testing.assert_allclose(fn(result.z, x).numpy(), result.z.numpy(), atol=1e-11)


def test_jacobian_penalty_estimates_the_frobenius_norm():
    """For the linear cell d f/dz = W^T per sample: E = ||W||_F^2 / dim and its gradient
    with respect to W is 2 W / dim. One probe per sample, 4000 samples: ~3% noise."""
    rng = np.random.default_rng(4)
    dim, batch = 4, 4000
    w_np = rng.normal(size=(dim, dim)) * 0.3
    w = tf.Variable(w_np)
    x = tf.constant(rng.normal(size=(batch, dim)))
    tf.random.set_seed(1)
    with tf.GradientTape() as tape:
        result = ki.ops.fixed_point(lambda z, x: z @ w + x, x, tf.zeros_like(x), tol=1e-10,
                                    jacobian_penalty=True)
    exact = np.sum(w_np ** 2) / dim
    assert abs(float(result.jacobian_penalty) - exact) < 0.1 * exact
    grad = tape.gradient(result.jacobian_penalty, w).numpy()
    np.testing.assert_allclose(grad, 2 * w_np / dim, atol=0.15 * np.abs(2 * w_np / dim).max())
    penalty = ki.ops.jacobian_penalty.jacobian_frobenius_penalty(
        lambda z: z @ w, tf.zeros([50, dim], tf.float64), num_samples=40, seed=7)
    assert abs(float(penalty) - exact) < 0.1 * exact
    assert ki.ops.fixed_point(lambda z, x: z @ w + x, x, tf.zeros_like(x)).jacobian_penalty is None


def test_non_convergence_is_reported(capfd):
    problem = Linear()
    kwargs = dict(tol=1e-12, max_iter=3)
    with pytest.warns(FixedPointWarning, match="forward solve with solver 'anderson' did not "
                                               "converge.*status 1; iterations: 3"):
        problem.solve(gradient=ki.ops.Implicit(max_iter=300), **kwargs)
    with pytest.warns(FixedPointWarning, match="backward \\(implicit\\) solve"):
        problem.solve(tol=1e-12, max_iter=300, gradient=ki.ops.Implicit(max_iter=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result, _ = problem.solve(on_failure="ignore", **kwargs)
    assert int(result.stats.status) == 1 and not bool(result.stats.converged)
    with pytest.raises(tf.errors.InvalidArgumentError, match="did not converge"):
        problem.solve(on_failure="raise", **kwargs)

    @tf.function
    def in_graph(on_failure):
        return ki.ops.fixed_point(problem.fn, problem.x, tf.zeros_like(problem.x),
                                  solver="picard", on_failure=on_failure, **kwargs).z

    with pytest.raises(tf.errors.InvalidArgumentError, match="did not converge"):
        in_graph("raise")
    in_graph("warn")
    assert "forward solve with solver 'picard' did not converge" in capfd.readouterr().err


def test_nan_cell_stops_at_the_first_non_finite_residual():
    x = tf.fill([2, 3], 0.5)
    for gradient in ("implicit", "unrolled"):
        result = ki.ops.fixed_point(lambda z, x: tf.math.log(z + x - 0.5) - 1.0, x,
                                    tf.ones_like(x), max_iter=10_000, gradient=gradient,
                                    on_failure="ignore")
        assert int(result.stats.status) == 2
        assert int(result.stats.forward_iterations) == 2


def test_a_nan_sample_is_the_worst_residual_of_the_batch():
    # tf.argmax passes over NaN: the stats reported the finite sample's residual (1.0),
    # or 0 when every sample was NaN, beside a NaN output.
    x = tf.constant([[2.0, 2.0], [-5.0, 1.0]], tf.float64)  # sqrt(-5): sample 1 is NaN
    for fn in (lambda z, x: tf.sqrt(x + 0.1 * z), lambda z, x: tf.sqrt(z - 1.0) + x):
        result = ki.ops.fixed_point(fn, x, tf.zeros_like(x), on_failure="ignore")
        assert np.isnan(result.z.numpy()).any()
        assert int(result.stats.status) == 2 and not bool(result.stats.converged)
        assert np.isnan(float(result.stats.abs_residual))
        assert np.isnan(float(result.stats.rel_residual))
    # A finite batch still reports its largest residual, with the other residual beside it.
    result = ki.ops.fixed_point(lambda z, x: 0.5 * z + x, x[:1] * [[1.0, 100.0]],
                                tf.zeros([1, 2], tf.float64), max_iter=3, on_failure="ignore")
    assert 0 < float(result.stats.abs_residual) < np.inf


def test_bad_arguments():
    x = tf.zeros([2, 3])
    fn = lambda z, x: 0.5 * z + x  # noqa: E731
    for kwargs, error, message in [
        ({"solver": "newton"}, ValueError, r"Valid names: .*Received: solver='newton'"),
        ({"gradient": {"name": "implicit", "solver": "newton"}}, ValueError,
         "Received: Implicit\\(solver\\)='newton'"),
        ({"tol": 0.0}, ValueError, "Received: tol=0.0"),
        ({"tol": -1.0}, ValueError, "Received: tol=-1.0"),
        ({"max_iter": 0}, ValueError, "Received: max_iter=0"),
        ({"gradient": {"name": "implicit", "tol": -1.0}}, ValueError, "Received: tol=-1.0"),
        ({"gradient": {"name": "implicit", "max_iter": 0}}, ValueError, "Received: max_iter=0"),
        ({"stop_mode": "l1"}, ValueError, "Received: stop_mode='l1'"),
        ({"gradient": "adjoint"}, ValueError, "Received: gradient='adjoint'"),
        ({"gradient": {"name": "phantom", "steps": 0}}, ValueError, "Received: steps=0"),
        ({"gradient": {"name": "phantom", "damping": 0.0}}, ValueError, "Received: damping=0.0"),
        ({"backward_tol": 1e-3}, TypeError, "backward_tol"),
        ({"on_failure": "print"}, ValueError, "Received: on_failure='print'"),
    ]:
        with pytest.raises(error, match=message):
            ki.ops.fixed_point(fn, x, x, **kwargs)
    with pytest.raises(ValueError, match=r"shape of z. Received: shape \(2, 4\) for z of "
                                         r"shape \(2, 3\)"):
        ki.ops.fixed_point(lambda z, x: tf.concat([z, x[:, :1]], 1), x, x)
    with pytest.raises(TypeError, match="dtype of z. Received: dtype float64"):
        ki.ops.fixed_point(lambda z, x: tf.cast(z, tf.float64), x, x)
    with pytest.raises(ValueError, match=r"`fn` must return the next z.*Received: None"):
        ki.ops.fixed_point(lambda z, x: None, x, x)
    with pytest.raises(TypeError, match="`z0` must be floating point"):
        ki.ops.fixed_point(fn, x, tf.zeros([2, 3], tf.int32))
    with pytest.raises(ValueError, match="leading batch axis"):
        ki.ops.fixed_point(fn, x, tf.constant(0.0))
    with pytest.raises(TypeError, match="`fn` must be callable"):
        ki.ops.fixed_point("f", x, x)


@pytest.mark.plain_graph(False)  # the "auto" fallback's reason
def test_inputs_that_are_not_numbers_get_errors_and_reasons_that_name_them():
    """x=None failed converting None to a tensor; a DEQ on int inputs blamed `z0`, which the
    user never passed; a string part of x made "auto" blame an "_Arg" op."""
    with pytest.raises(TypeError, match="`x` must be a tensor or a nested structure"):
        ki.ops.fixed_point(lambda z, x: z, None, tf.zeros((2, 3)))
    with pytest.raises(TypeError, match="DEQ inputs must be floating point"):
        ki.layers.DEQ(ki.layers.DEQDenseCell())(tf.ones((2, 3), tf.int32))
    x = {"a": tf.ones((2, 3), tf.float64), "tag": tf.constant(["u", "v"])}
    solve = tf.function(lambda: ki.ops.fixed_point(
        lambda z, x: 0.5 * tf.tanh(z) + x["a"], x, tf.zeros((2, 3), tf.float64)).z)
    with pytest.warns(UserWarning, match=r"does not compile with XLA \(an input of dtype "
                                         r"string\)"):
        z = solve()
    np.testing.assert_allclose(z.numpy(), 0.5 * np.tanh(z.numpy()) + 1.0, atol=1e-4)


def test_the_jacobian_penalty_of_an_empty_batch_is_zero():  # it was NaN (0 / 0)
    from keras_implicit.ops.jacobian_penalty import jacobian_frobenius_penalty

    penalty = jacobian_frobenius_penalty(lambda z: 2.0 * z, tf.zeros([0, 3]), seed=1)
    assert float(penalty) == 0.0
    assert float(jacobian_frobenius_penalty(lambda z: 2.0 * z, tf.ones([2, 3]), 64, 1)) > 0
