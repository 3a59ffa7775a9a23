"""Numerical methods: Runge–Kutta tableaux and solvers, TFP adapters, the registry."""

from keras_implicit.solvers.adaptive import AdaptiveRungeKutta
from keras_implicit.solvers.base import ODESolver, SolveStats
from keras_implicit.solvers.fixed_grid import FixedGridRungeKutta
from keras_implicit.solvers.registry import ODE_SOLVERS, get
from keras_implicit.solvers.runge_kutta import ButcherTableau
