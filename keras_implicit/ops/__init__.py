"""The functional core: pure TensorFlow, no Keras state.

- ``odeint`` and its gradient strategies ``Adjoint``, ``Backprop``, ``Checkpointed``;
- ``fixed_point`` and its gradient strategies ``Implicit``, ``Phantom``, ``Unrolled``;
- ``Status`` (how any solve ended), the statistics and the warnings of failed solves;
- the divergence estimators ``exact_trace`` and ``hutchinson_trace``.
"""

from keras_implicit.ops.adjoint import Adjoint
from keras_implicit.ops.checkpointed import Checkpointed
from keras_implicit.ops.failure import FixedPointWarning, ODEWarning, SolverWarning
from keras_implicit.ops.fixed_point import FixedPointResult, fixed_point
from keras_implicit.ops.fixed_point_gradients import FixedPointGradient, Phantom, Unrolled
from keras_implicit.ops.implicit_gradient import Implicit
from keras_implicit.ops.ode_gradients import Backprop, ODEGradient
from keras_implicit.ops.ode_result import ODEResult
from keras_implicit.ops.odeint import odeint
from keras_implicit.ops.stats import FixedPointStats, ODEStats
from keras_implicit.ops.trace import exact_trace, hutchinson_trace, sample_noise
from keras_implicit.solvers.status import Status
