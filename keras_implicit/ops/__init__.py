"""The functional core: pure TensorFlow, no Keras state."""

from keras_implicit.ops.gradients import Adjoint, Backprop
from keras_implicit.ops.ode_result import ODEResult, ODEStats
from keras_implicit.ops.odeint import odeint
from keras_implicit.ops.fixed_point import FixedPointResult, fixed_point
from keras_implicit.ops.trace import exact_trace, hutchinson_trace, sample_noise
