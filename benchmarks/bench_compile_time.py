"""First-call (tracing and graph compilation) time of the ODE-Net, in seconds.

A fresh model and a fresh ``tf.function`` per measurement; ``setup`` runs an
unrelated function first so that TensorFlow's one-time start-up is not
counted. ``track_trace_seconds``: Python tracing alone
(``get_concrete_function``); ``track_first_call_seconds``: the first call,
i.e. tracing, graph optimisation and one execution. ``predict`` is the
forward pass, ``train_step`` forward + backward + SGD update (the adjoint
traces a second, backward solve).
"""

import time

from . import common

MODELS = ["odenet_adjoint", "odenet_backprop", "rknet"]
CALLS = ["predict", "train_step"]
BATCH = common.quick(32, 2)


def _function(call, model):
    import tensorflow as tf

    if call == "predict":
        return tf.function(lambda x, y: model(x, training=False))
    return common.make_train_step(model)


class FirstCall:
    params = [MODELS, CALLS]
    param_names = ["model", "call"]
    timeout = 300

    def setup(self, model, call):
        import tensorflow as tf

        tf.function(lambda x: tf.nn.relu(x) * 2.0)(tf.ones([2]))
        self.x, self.y = common.mnist_batch(BATCH)

    def track_trace_seconds(self, model, call):
        function = _function(call, common.build_model(model))
        start = time.perf_counter()
        function.get_concrete_function(self.x, self.y)
        return time.perf_counter() - start

    def track_first_call_seconds(self, model, call):
        function = _function(call, common.build_model(model))
        start = time.perf_counter()
        function(self.x, self.y)
        return time.perf_counter() - start

    track_trace_seconds.unit = "seconds"
    track_first_call_seconds.unit = "seconds"
