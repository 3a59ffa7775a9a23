"""Fixed-point solvers by name: ``get("anderson" | {"name": ..., **options} | instance)``."""

from keras_implicit.solvers import fixed_point_base as base
from keras_implicit.solvers.anderson import Anderson
from keras_implicit.solvers.broyden import Broyden
from keras_implicit.solvers.picard import Picard
from keras_implicit.solvers.registry import Registry

FIXED_POINT_SOLVERS = {
    "anderson": Anderson,
    "broyden": Broyden,
    "picard": Picard,
}

_REGISTRY = Registry("fixed-point solver", base.FixedPointSolver, FIXED_POINT_SOLVERS)
get = _REGISTRY.get
serialize = _REGISTRY.serialize
