"""Keeping a layer's last solver statistics in non-trainable weights."""

import keras
import tensorflow as tf


class SolverStatsMixin:
    """For implicit layers: statistics of the last call as variables.

    A layer calls ``_add_solver_stat(name, dtype)`` in ``build()`` for each
    statistic and ``_record_solver_stats({name: value})`` when it knows the
    value (in ``call``, or in the backward pass through a callback of the op).
    ``solver_stats()`` returns them; ``ki.callbacks.SolverStats`` puts them
    into Keras logs. The weights are non-trainable, aggregated from the first
    replica under a distribution strategy, and saved with the model.
    """

    def _add_solver_stat(self, name, dtype="int32"):
        if not hasattr(self, "_solver_stat_variables"):
            self._solver_stat_variables = {}
        self._solver_stat_variables[name] = self.add_weight(
            name=name, shape=(), dtype=dtype, initializer="zeros", trainable=False,
            aggregation="only_first_replica",
        )

    def _record_solver_stats(self, values):
        for name, value in values.items():
            if value is None:
                continue
            variable = self._solver_stat_variables[name]
            variable.assign(tf.cast(value, variable.dtype))

    def solver_stats(self):
        """The last recorded statistics, ``{name: value}`` (e.g. ``nfe_forward``)."""
        return {name: keras.ops.convert_to_tensor(v)
                for name, v in getattr(self, "_solver_stat_variables", {}).items()}
