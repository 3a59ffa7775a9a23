"""How ``fixed_point`` differentiates a solve: gradient strategies as small objects.

- ``Implicit`` (``"implicit"``, in ``ops.implicit_gradient``): the implicit
  function theorem; the backward pass solves a linear fixed point with its
  own solver, tolerance and iteration bound; memory independent of the
  iterations.
- :class:`Phantom` (``"phantom"``): ``steps`` damped steps from ``z*``,
  backpropagated (Geng et al. 2021).
- :class:`Unrolled` (``"unrolled"``): backpropagation through every iteration
  of the solver; memory grows with the iterations.

``fixed_point`` prepares a :class:`FixedPointProblem` (rows of flattened
samples) and calls the strategy's ``solve``.
"""

import collections

import tensorflow as tf

from keras_implicit import validation
from keras_implicit.ops import failure
from keras_implicit.ops.stats import FixedPointStats
from keras_implicit.solvers import fixed_point_base
from keras_implicit.solvers.registry import Configured, Registry
from keras_implicit.solvers.status import Status
from tensorflow.python.eager import record


def no_recording():
    """Stops every gradient tape on this thread (the forward solve keeps no tape)."""
    return record.stop_recording()


class FixedPointProblem(collections.namedtuple("FixedPointProblem", [
        "fn", "z0", "xs", "solver", "tol", "max_iter", "stop_mode", "on_failure", "on_backward",
        "cell_wrapper", "step_wrapper", "iteration_wrapper", "solve_wrapper", "compiled",
        "state_dtype"], defaults=(None,))):
    """A prepared fixed-point solve, as ``fixed_point`` hands it to a gradient strategy.

    Attributes:
        fn: ``fn(z, xs) -> z`` on ``(batch, dim)`` rows, ``xs`` a list of tensors.
        z0: ``(batch, dim)`` initial guess.
        xs: the tensors the gradient must reach (besides the variables ``fn`` reads).
        solver: a ``FixedPointSolver``; tol, max_iter, stop_mode: its options.
        on_failure: ``"raise"``, ``"warn"`` or ``"ignore"``.
        on_backward: called with the ``FixedPointStats`` after a backward solve.
        cell_wrapper, step_wrapper, iteration_wrapper, solve_wrapper: compile
            the map, an iteration without the map, a whole iteration, or the
            whole forward solve (``ops.jit.plan_fixed_point``), or ``None``.
        compiled: the name of the compiled path, for the statistics.
        state_dtype: the caller's dtype of ``z`` (``z0`` is in the solve's, float32
            for half precision), or ``None``: a float16 backward solve that
            overflows gives NaN gradients (``failure.backward_overflow``).
    """

    __slots__ = ()

    def forward_map(self, xs):
        def cell(z):
            return self.fn(z, xs)

        return cell if self.cell_wrapper is None else self.cell_wrapper(cell)

    def solve_forward(self, xs, z0):
        """The forward solve of ``z = fn(z, xs)`` from ``z0``, reported per ``on_failure``:
        ``(z, FixedPointStats)``."""
        wrappers = {}
        if self.solver.fusable:
            wrappers = {"step_wrapper": self.step_wrapper,
                        "iteration_wrapper": self.iteration_wrapper}

        def run(z0, *xs):
            return self.solver.solve(self.forward_map(list(xs)), z0, tol=self.tol,
                                     max_iter=self.max_iter, stop_mode=self.stop_mode,
                                     **wrappers)

        if self.solve_wrapper is not None:
            run = self.solve_wrapper(run)
        z, stats = run(z0, *xs)
        # Outside any compiled part: XLA drops the assertions a failure report may raise.
        [z] = report(stats, self.solver.name, "forward", self.tol, self.on_failure, [z])
        return z, FixedPointStats.from_solve(stats, compiled=self.compiled)


def report(stats, solver_name, phase, tol, on_failure, outputs):
    """Reports a fixed-point solve that did not converge (``failure.report``)."""
    return failure.report(
        stats.status, on_failure, "fixed_point",
        f"fixed_point: the {phase} solve with solver {solver_name!r} did not converge",
        ["; iterations:", stats.iterations, "; residual: abs", stats.abs_residual, "rel",
         stats.rel_residual, f"; tol: {tol:g}"], outputs)


class FixedPointGradient(Configured):
    """Base class of the gradient strategies of ``fixed_point``.

    Subclasses implement ``solve(problem) -> (z_rows, FixedPointStats)`` and
    ``get_config``.
    """

    name = None

    def solve(self, problem):
        raise NotImplementedError


FIXED_POINT_GRADIENTS = Registry("fixed-point gradient strategy", FixedPointGradient, "gradient")


@FIXED_POINT_GRADIENTS.register("phantom")
class Phantom(FixedPointGradient):
    """The phantom gradient: ``steps`` damped steps ``z <- (1 - damping) z + damping f(z, x)``
    from ``z*``, backpropagated (Geng et al. 2021).

    Args:
        steps: int >= 1.
        damping: in (0, 1].

    Example:
        >>> ki.layers.DEQ(cell, gradient=ki.ops.Phantom(steps=5, damping=0.5))
    """

    name = "phantom"

    def __init__(self, steps=1, damping=1.0):
        self.steps = validation.positive_int("steps", steps)
        self.damping = fixed_point_base.check_damping(damping)

    def get_config(self):
        return {"steps": self.steps, "damping": self.damping}

    def solve(self, problem):
        constants = [tf.stop_gradient(t) for t in problem.xs]
        with no_recording():
            z, stats = problem.solve_forward(constants, tf.stop_gradient(problem.z0))
        z = tf.stop_gradient(z)
        for _ in range(self.steps):
            f = problem.fn(z, problem.xs)
            z = f if self.damping == 1.0 else z + self.damping * (f - z)
        stats.set_backward(backward_iterations=tf.constant(self.steps, tf.int32),
                           backward_status=tf.constant(Status.SUCCESS, tf.int32))
        return z, stats


@FIXED_POINT_GRADIENTS.register("unrolled")
class Unrolled(FixedPointGradient):
    """Backpropagation through every iteration of the solver (memory grows with them).

    Example:
        >>> ki.ops.fixed_point(fn, x, z0, gradient="unrolled")
    """

    name = "unrolled"

    def solve(self, problem):
        return problem.solve_forward(problem.xs, problem.z0)


def get(identifier, argument="gradient"):
    """A ``FixedPointGradient`` from ``"implicit"``, ``"phantom"``, ``"unrolled"``, a config
    dict or an instance."""
    return FIXED_POINT_GRADIENTS.get(identifier, argument)
