"""Ready-made architectures built from keras_implicit layers."""

from keras_implicit.applications.odenet_blocks import (  # noqa: F401
    ODEBlockDynamics, ResidualBlock)
from keras_implicit.applications.odenet_mnist import odenet_mnist  # noqa: E402,F401
from keras_implicit.applications.deq_mnist import deq_mnist  # noqa: E402,F401
