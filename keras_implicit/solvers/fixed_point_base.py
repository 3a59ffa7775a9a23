"""What every fixed-point solver shares: statistics, status codes and the iteration driver.

A fixed-point solver looks for ``z = fn(z)`` where ``z`` is a ``(batch, dim)``
tensor (``ops.fixed_point`` flattens every sample into a row before it calls
a solver). The residual is measured per sample, ``||fn(z_b) - z_b||_2``
(``"abs"``) or that divided by ``||fn(z_b)||_2`` (``"rel"``); the solve ends
when every sample's best residual so far is ``<= tol`` (``SUCCESS``), after
``max_iter`` evaluations of ``fn`` (``MAX_ITER_REACHED``) or at the first
NaN/Inf residual (``NON_FINITE``). For each sample the solver returns the
image ``fn(z_b)`` of its best iterate (lowest residual), so a sample that
converged early keeps its solution while the others iterate on.

Every loop is a ``tf.while_loop``: solvers run eagerly, inside
``tf.function`` and under distribution strategies, and can be
backpropagated through (``gradient="unrolled"``).
"""

import collections

import numpy as np
import tensorflow as tf

RUNNING = -1
SUCCESS = 0
MAX_ITER_REACHED = 1
NON_FINITE = 2

STATUS_MESSAGES = {
    SUCCESS: "converged",
    MAX_ITER_REACHED: "max_iter evaluations did not bring every sample's residual below tol",
    NON_FINITE: "the residual became NaN or Inf (the map may be non-contractive or diverging)",
}

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
            ``||fn(z) - z||``.
        rel_residual: the same samples' ``||fn(z) - z|| / ||fn(z)||``.
        status: int32, ``SUCCESS``, ``MAX_ITER_REACHED`` or ``NON_FINITE``.
    """

    __slots__ = ()

    @property
    def converged(self):
        return tf.equal(self.status, SUCCESS)


def check_solve_arguments(tol, max_iter, stop_mode, prefix=""):
    """Validates the arguments every solve takes (raising ``ValueError`` naming them).

    ``prefix`` is prepended to the names in messages (``"backward_"``).
    """
    tol_name, iter_name = f"{prefix}tol", f"{prefix}max_iter"
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{tol_name}` must be a number > 0. Received: {tol_name}={tol!r}")
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"`{tol_name}` must be a finite number > 0. Received: {tol_name}={tol}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(
            f"`{iter_name}` must be an int >= 1. Received: {iter_name}={max_iter!r}")
    if stop_mode not in STOP_MODES:
        raise ValueError(
            f"`stop_mode` must be one of {list(STOP_MODES)}. Received: stop_mode={stop_mode!r}")


def row_norms(v):
    """Euclidean norm of each row of ``(batch, dim)``, without overflow of the squares
    (float32 iterates of a diverging map reach 1e20 long before they overflow)."""
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
    dtype = z0.dtype
    tol = tf.constant(tol, dtype)
    use_rel = stop_mode == "rel"
    fz0 = fn(z0)
    abs0, rel0 = residuals(z0, fz0)

    def status_of(best_abs, best_rel, abs_k, rel_k, k):
        best = best_rel if use_rel else best_abs
        finite = tf.reduce_all(tf.math.is_finite(abs_k)) & tf.reduce_all(tf.math.is_finite(rel_k))
        done = tf.reduce_all(best <= tol)
        return tf.where(~finite, NON_FINITE,
                        tf.where(done, SUCCESS,
                                 tf.where(k >= max_iter, MAX_ITER_REACHED, RUNNING)))

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
        lambda k, status, *_: tf.equal(status, RUNNING),
        body,
        (k0, status0, z0, fz0, fz0, abs0, rel0, state0),
    )
    worst = tf.argmax(best_rel if use_rel else best_abs, output_type=tf.int32)
    stats = FixedPointSolveStats(
        iterations=k,
        abs_residual=tf.gather(best_abs, worst),
        rel_residual=tf.gather(best_rel, worst),
        status=status,
    )
    return best_z, stats


class FixedPointSolver:
    """Base class of the fixed-point solvers (``"picard"``, ``"anderson"``, ``"broyden"``).

    Subclasses set ``name``, keep their options as attributes and implement
    ``solve``; ``get_config()`` returns what ``fixed_point_registry.get``
    turns back into an equal solver.
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
        return {"name": self.name}

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(tuple(sorted(self.get_config().items())))

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({options})"


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1. Received: {name}={value!r}")
    return int(value)


def check_damping(value, name="damping"):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 < value <= 1:
        raise ValueError(f"`{name}` must be a number in (0, 1]. Received: {name}={value!r}")
    return float(value)
