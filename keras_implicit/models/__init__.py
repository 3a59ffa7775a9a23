"""``keras.Model`` subclasses built from keras_implicit layers."""

from keras_implicit.models.latent_ode import LatentODE
from keras_implicit.models.latent_ode_parts import GRUEncoder, ODEGRUCell, ODERNNEncoder

from keras_implicit.models.continuous_flow import ContinuousFlow
