"""Numerical methods: Runge–Kutta tableaux and solvers, step-size controllers, TFP adapters,
fixed-point solvers, and their registries.

``get`` and ``register`` are those of the ODE solvers; every kind of pluggable
object has its own registry (``ODE_SOLVERS``, ``FIXED_POINT_SOLVERS``,
``STEP_CONTROLLERS``), and ``ki.serialization`` reaches them all by kind.
"""

from keras_implicit.solvers.adaptive import AdaptiveRungeKutta
from keras_implicit.solvers.anderson import Anderson
from keras_implicit.solvers.base import (
    ODE_SOLVERS, ODESolver, SolveResult, SolverOptions, SolveStats, get, register)
from keras_implicit.solvers.broyden import Broyden
from keras_implicit.solvers.fixed_grid import FixedGridRungeKutta
from keras_implicit.solvers.fixed_point_base import (
    FIXED_POINT_SOLVERS, FixedPointSolver, FixedPointSolveStats)
from keras_implicit.solvers.picard import Picard
from keras_implicit.solvers.runge_kutta import ButcherTableau
from keras_implicit.solvers.status import Status
from keras_implicit.solvers.step_control import (
    STEP_CONTROLLERS, IController, PIDController, StepController)
from keras_implicit.solvers import tfp  # noqa: F401  (registers "tfp_dopri5" and "bdf")
