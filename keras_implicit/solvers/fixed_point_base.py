"""What every fixed-point solver shares: the interface, statistics, the registry.

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

Every loop is a ``tf.while_loop`` (``fixed_point_loop``): solvers run
eagerly, inside ``tf.function`` and under distribution strategies, and can be
backpropagated through (``ki.ops.Unrolled``). A solver that implements
``init_state`` and ``update`` (all the built-in ones) runs on the shared
driver (``fixed_point_loop``), whose iterations or whole solve ``ops.jit`` can
compile with XLA (``jit_cell``).
"""

from keras_implicit import validation
from keras_implicit.solvers import fixed_point_loop
from keras_implicit.solvers.fixed_point_loop import (  # noqa: F401  (the public helpers)
    FixedPointSolveStats, batch_where, residuals, row_norms, worst_of)
from keras_implicit.solvers.registry import Configured, Registry

STOP_MODES = ("rel", "abs")


def check_solve_arguments(tol, max_iter, stop_mode, prefix=""):
    """Validates the arguments every solve takes; returns ``(tol, max_iter, stop_mode)``.

    ``prefix`` is prepended to the names in messages (``"backward_"``).
    """
    tol = validation.positive_float(f"{prefix}tol", tol)
    max_iter = validation.positive_int(f"{prefix}max_iter", max_iter)
    stop_mode = validation.one_of("stop_mode", stop_mode, STOP_MODES)
    return tol, max_iter, stop_mode


class FixedPointSolver(Configured):
    """Base class of the fixed-point solvers (``"picard"``, ``"anderson"``, ``"broyden"``).

    Subclasses set ``name`` and keep their options as attributes. They either
    implement ``init_state`` and ``update`` (one step of the method from an
    iterate and its image; the shared driver evaluates the map, tracks the
    best iterate and stops, and can compile a whole iteration with XLA), or
    override ``solve`` with a loop of their own. Either way they implement
    ``get_config`` (the constructor's arguments) and are registered with
    ``FIXED_POINT_SOLVERS.register()`` (or
    ``ki.serialization.register("fixed_point_solver")``) to be used by name
    and saved.
    """

    name = None

    def init_state(self, z0):
        """The solver's loop state before the first iteration (nested tensors)."""
        raise NotImplementedError

    def update(self, state, z, fz):
        """``(state, z_next)``: the next iterate from iterate ``z`` and its image ``fz``,
        both ``(batch, dim)``. Must not call the map."""
        raise NotImplementedError

    def bounded(self, max_iter):
        """This solver for a solve of at most ``max_iter`` iterations. A solver that keeps
        a history returns one whose history holds no more than those iterations can fill:
        the same iterates (to rounding), without allocating what a ``memory`` beyond
        ``max_iter`` would (``Anderson(memory=10**6)``: a Gram matrix of 10**12 entries per
        sample)."""
        return self

    @property
    def fusable(self):
        """Whether the solver runs on the shared driver (``update`` implemented, ``solve``
        not overridden), whose iteration can be compiled whole (``ops.jit``)."""
        cls = type(self)
        return (cls.solve is FixedPointSolver.solve
                and cls.update is not FixedPointSolver.update)

    def solve(self, fn, z0, *, tol=1e-4, max_iter=50, stop_mode="rel", step_wrapper=None,
              iteration_wrapper=None):
        """Finds ``z = fn(z)`` from ``z0``.

        Args:
            fn: the map, ``(batch, dim) -> (batch, dim)``.
            z0: ``(batch, dim)`` initial guess.
            tol: tolerance of every sample's residual, > 0.
            max_iter: bound on the evaluations of ``fn``, >= 1.
            stop_mode: ``"rel"`` or ``"abs"``.
            step_wrapper, iteration_wrapper: compile one iteration without or
                with ``fn`` (``fixed_point_loop``); only solvers on the shared
                driver (``fusable``) take them.

        Returns:
            ``(z, stats)``: ``(batch, dim)`` and a :class:`FixedPointSolveStats`.
        """
        tol, max_iter, stop_mode = check_solve_arguments(tol, max_iter, stop_mode)
        return fixed_point_loop.iterate(fn, z0, self, tol=tol, max_iter=max_iter,
                                        stop_mode=stop_mode, step_wrapper=step_wrapper,
                                        iteration_wrapper=iteration_wrapper)


FIXED_POINT_SOLVERS = Registry("fixed-point solver", FixedPointSolver, "solver")


def get(identifier, argument="solver"):
    """A ``FixedPointSolver`` from a name, a config dict or an instance."""
    return FIXED_POINT_SOLVERS.get(identifier, argument)


def check_damping(value, name="damping"):
    return validation.check_float(name, value, 0.0, 1.0, exclusive_minimum=True)
