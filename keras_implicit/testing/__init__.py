"""Problems with exact solutions, shared by the tests and the benchmarks."""

from keras_implicit.testing.ode_problems import (
    ODE_PROBLEMS, Logistic, LinearODE, TimeDependentLinearODE)
from keras_implicit.testing.layer_contract import run_layer_contract
