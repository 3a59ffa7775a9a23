"""What every fixed-point solver shares: statistics, the iteration driver, the registry.

A fixed-point solver looks for ``z = fn(z)`` where ``z`` is a ``(batch, dim)``
tensor (``ops.fixed_point`` flattens every sample into a row before it calls
a solver). The residual is measured per sample, ``||fn(z_b) - z_b||_2``
(``"abs"``) or that divided by ``||fn(z_b)||_2`` (``"rel"``), in the control
dtype (float32 for half-precision ``z``); the solve ends when every sample's
best residual so far is ``<= tol`` (``Status.SUCCESS``), after ``max_iter``
evaluations of ``fn`` (``Status.MAX_STEPS_REACHED``) or at the first NaN/Inf
residual (``Status.NON_FINITE``). For each sample the solver returns the image
``fn(z_b)`` of its best iterate (lowest residual), so a sample that converged
early keeps its solution while the others iterate on. An empty batch
converges at once.

Every loop is a ``tf.while_loop``: solvers run eagerly, inside
``tf.function`` and under distribution strategies, and can be
backpropagated through (``ki.ops.Unrolled``).
"""

import collections

import tensorflow as tf

from keras_implicit import validation
from keras_implicit.solvers import state as state_ops
from keras_implicit.solvers.registry import Registry
from keras_implicit.solvers.status import Status

STOP_MODES = ("rel", "abs")

# Added to ||fn(z)|| in the relative residual (as in torchdeq), so that z* = 0 is reachable.
_REL_EPSILON = 1e-9


class FixedPointSolveStats(
    collections.namedtuple(
        "FixedPointSolveStats", ["iterations", "abs_residual", "rel_residual", "status"])
):
    """Statistics of one fixed-point solve, all scalar tensors.

    Attributes:
        iterations: int32, evaluations of the map.
        abs_residual: the largest over the batch of each sample's best
            ``||fn(z) - z||`` (control dtype).
        rel_residual: the same samples' ``||fn(z) - z|| / ||fn(z)||``.
        status: int32, a ``Status`` value.
    """

    __slots__ = ()

    @property
    def converged(self):
        return tf.equal(self.status, Status.SUCCESS)


def check_solve_arguments(tol, max_iter, stop_mode, prefix=""):
    """Validates the arguments every solve takes; returns ``(tol, max_iter, stop_mode)``.

    ``prefix`` is prepended to the names in messages (``"backward_"``).
    """
    tol = validation.positive_float(f"{prefix}tol", tol)
    max_iter = validation.positive_int(f"{prefix}max_iter", max_iter)
    stop_mode = validation.one_of("stop_mode", stop_mode, STOP_MODES)
    return tol, max_iter, stop_mode


def row_norms(v):
    """Euclidean norm of each row of ``(batch, dim)``, without overflow of the squares
    (float32 iterates of a diverging map reach 1e20 long before they overflow)."""
    v = tf.cast(v, state_ops.control_dtype(v.dtype))
    scale = tf.reduce_max(tf.abs(v), axis=-1)
    safe = tf.where(scale > 0, scale, tf.ones_like(scale))
    return tf.sqrt(tf.reduce_sum(tf.square(v / tf.expand_dims(safe, -1)), axis=-1)) * scale


def residuals(z, fz):
    """Per-sample absolute and relative residuals of ``(batch, dim)`` tensors."""
    abs_residual = row_norms(fz - z)
    rel_residual = abs_residual / (row_norms(fz) + _REL_EPSILON)
    return abs_residual, rel_residual


def batch_where(mask, a, b):
    """Rows of ``a`` where the per-sample ``mask`` (batch,) holds, else of ``b`` (batch, dim)."""
    return tf.where(tf.expand_dims(mask, -1), a, b)


def worst_of(values, *others):
    """The entries at the largest of ``values`` (batch,); zeros for an empty batch."""
    padded = tf.concat([values, tf.zeros([1], values.dtype)], 0)
    worst = tf.argmax(padded, output_type=tf.int32)
    return [tf.gather(padded, worst)] + [
        tf.gather(tf.concat([x, tf.zeros([1], x.dtype)], 0), worst) for x in others]


def iterate(fn, z0, step, state0, *, tol, max_iter, stop_mode):
    """Runs a fixed-point iteration, tracking each sample's best iterate.

    Args:
        fn: the map, ``(batch, dim) -> (batch, dim)``.
        z0: ``(batch, dim)`` initial guess.
        step: ``step(state, z, fz) -> (state, z_next, fz_next)``: one
            iteration from iterate ``z`` with image ``fz`` (one evaluation of
            ``fn``, inside ``step``). ``state`` is the solver's own loop state.
        state0: the solver's initial state, a nested structure of tensors.
        tol, max_iter, stop_mode: see the module docstring.

    Returns:
        ``(z, stats)``: the image of each sample's best iterate and a
        :class:`FixedPointSolveStats`.
    """
    fz0 = fn(z0)
    abs0, rel0 = residuals(z0, fz0)
    tol = tf.constant(tol, abs0.dtype)
    use_rel = stop_mode == "rel"

    def status_of(best_abs, best_rel, abs_k, rel_k, k):
        best = best_rel if use_rel else best_abs
        finite = tf.reduce_all(tf.math.is_finite(abs_k)) & tf.reduce_all(tf.math.is_finite(rel_k))
        done = tf.reduce_all(best <= tol)
        return tf.where(~finite, Status.NON_FINITE,
                        tf.where(done, Status.SUCCESS,
                                 tf.where(k >= max_iter, Status.MAX_STEPS_REACHED,
                                          Status.RUNNING)))

    def body(k, status, z, fz, best_z, best_abs, best_rel, state):
        state, z, fz = step(state, z, fz)
        abs_k, rel_k = residuals(z, fz)
        better = (rel_k < best_rel) if use_rel else (abs_k < best_abs)
        best_z = batch_where(better, fz, best_z)
        best_abs = tf.where(better, abs_k, best_abs)
        best_rel = tf.where(better, rel_k, best_rel)
        k = k + 1
        return (k, status_of(best_abs, best_rel, abs_k, rel_k, k), z, fz, best_z, best_abs,
                best_rel, state)

    k0 = tf.constant(1, tf.int32)
    status0 = status_of(abs0, rel0, abs0, rel0, k0)
    k, status, _, _, best_z, best_abs, best_rel, _ = tf.while_loop(
        lambda k, status, *_: tf.equal(status, Status.RUNNING),
        body,
        (k0, status0, z0, fz0, fz0, abs0, rel0, state0),
        maximum_iterations=max_iter,
    )
    if use_rel:
        rel_residual, abs_residual = worst_of(best_rel, best_abs)
    else:
        abs_residual, rel_residual = worst_of(best_abs, best_rel)
    stats = FixedPointSolveStats(iterations=k, abs_residual=abs_residual,
                                 rel_residual=rel_residual, status=status)
    return best_z, stats


class FixedPointSolver:
    """Base class of the fixed-point solvers (``"picard"``, ``"anderson"``, ``"broyden"``).

    Subclasses set ``name``, keep their options as attributes, implement
    ``solve`` and ``get_config`` (the constructor's arguments); register them
    with ``FIXED_POINT_SOLVERS.register()`` (or
    ``ki.serialization.register("fixed_point_solver")``) to use them by name
    and save them.
    """

    name = None

    def solve(self, fn, z0, *, tol=1e-4, max_iter=50, stop_mode="rel"):
        """Finds ``z = fn(z)`` from ``z0``.

        Args:
            fn: the map, ``(batch, dim) -> (batch, dim)``.
            z0: ``(batch, dim)`` floating tensor.
            tol: tolerance of each sample's residual, > 0.
            max_iter: bound on the evaluations of ``fn``, >= 1.
            stop_mode: ``"rel"`` or ``"abs"`` residual.

        Returns:
            ``(z, stats)``: ``(batch, dim)`` and a :class:`FixedPointSolveStats`.
        """
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, repr(sorted(self.get_config().items()))))

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({options})"


FIXED_POINT_SOLVERS = Registry("fixed-point solver", FixedPointSolver, "solver")


def get(identifier, argument="solver"):
    """A ``FixedPointSolver`` from a name, a config dict or an instance."""
    return FIXED_POINT_SOLVERS.get(identifier, argument)


def check_damping(value, name="damping"):
    return validation.check_float(name, value, 0.0, 1.0, exclusive_minimum=True)
