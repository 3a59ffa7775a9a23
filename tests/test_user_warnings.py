"""Every warning of the package points at the user's line (user_warnings.warn), eager or
traced, from odeint or from deep inside Keras' predict."""

import subprocess
import sys
import warnings

import keras
import numpy as np
import tensorflow as tf

import keras_implicit as ki


def refused(t, y):
    """Dynamics XLA cannot compile: "auto" falls back with a warning."""
    return -tf.ensure_shape(tf.py_function(lambda v: v, [y], y.dtype), y.shape)


def caught(action):
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("default")  # Python's own: once per location
        action()
    return log


def test_warnings_point_at_the_users_line_and_each_call_site_gets_its_own():
    y0 = tf.ones((2, 3), tf.float64)

    def two_call_sites():
        tf.function(lambda: ki.ops.odeint(refused, y0, [0.0, 1.0]).states)()
        tf.function(lambda: ki.ops.odeint(refused, y0, [0.0, 1.0]).states)()

    log = caught(two_call_sites)
    fallbacks = [w for w in log if "does not compile with XLA" in str(w.message)]
    assert len(fallbacks) == 2, [str(w.message) for w in log]
    assert {w.filename for w in fallbacks} == {__file__}
    assert len({w.lineno for w in fallbacks}) == 2

    # eager: a failed solve under on_failure="warn"
    log = caught(lambda: ki.ops.odeint(lambda t, y: y * y, y0, [0.0, 2.0], on_failure="warn"))
    assert [w.filename for w in log if issubclass(w.category, ki.ops.SolverWarning)] == [__file__]


class Refused(keras.layers.Layer):
    def call(self, y):
        return refused(None, y)


def test_a_warning_from_inside_predict_points_at_the_predict_call():
    model = keras.Sequential([ki.layers.NeuralODE(Refused())])
    x = np.ones((2, 3), "float32")
    log = caught(lambda: model.predict(x, verbose=0))
    fallbacks = [w for w in log if "does not compile with XLA" in str(w.message)]
    assert [w.filename for w in fallbacks] == [__file__]


def test_a_deprecation_warning_shows_under_the_default_filter_from_main():
    """Python shows a DeprecationWarning by default only when it is attributed to __main__;
    one attributed to the package's own line never showed in a user's script."""
    code = ("from keras_implicit.layers import deq\n"
            "deq.migrate_legacy_gradient({'backward_tol': 1e-6})\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "DeprecationWarning: DEQ options ['backward_tol']" in result.stderr
