"""The dense solution of an adaptive solve: every accepted step's interpolating polynomial.

``DenseRecorder`` collects, inside the solver's loop, each accepted step's
start time, size and polynomial coefficients (``interpolation.coefficients``);
``DenseSolution.evaluate(t)`` then gives the state at any ``t`` in the solved
span from them, at the interpolant's order (fourth for Dormand–Prince, third
for Bogacki–Shampine). Memory: one polynomial (4 or 5 state-sized
coefficients) per accepted step.
"""

import tensorflow as tf

from keras_implicit.solvers import interpolation


class DenseRecorder:
    """Loop-side collector of accepted steps (a ``tf.TensorArray`` per quantity)."""

    def __init__(self, degree, dtype):
        self.degree = degree
        self.dtype = dtype

    def arrays(self, y):
        """Empty arrays for the steps' start times, sizes and per-tensor coefficients."""
        return {
            "starts": tf.TensorArray(self.dtype, size=0, dynamic_size=True, element_shape=[]),
            "sizes": tf.TensorArray(self.dtype, size=0, dynamic_size=True, element_shape=[]),
            "coefficients": [
                tf.TensorArray(v.dtype, size=0, dynamic_size=True,
                               element_shape=tf.TensorShape([self.degree + 1]).concatenate(v.shape))
                for v in y],
        }

    def record(self, count, arrays, accept, t, h, coefficients):
        """Appends an accepted step at index ``count`` (a no-op for a rejected one)."""

        def write():
            return count + 1, {
                "starts": arrays["starts"].write(count, t),
                "sizes": arrays["sizes"].write(count, h),
                "coefficients": [ta.write(count, tf.stack(c)) for ta, c in
                                 zip(arrays["coefficients"], coefficients)]}

        return tf.cond(accept, write, lambda: (count, arrays))

    def gather(self, arrays, start, end):
        """The coefficients recorded at indices ``[start, end)`` (a list per tensor)."""
        indices = tf.range(start, end)
        return [ta.gather(indices) for ta in arrays["coefficients"]]

    def finish(self, arrays, end, complete=True):
        return DenseSolution(arrays["starts"].stack(), arrays["sizes"].stack(),
                             [ta.stack() for ta in arrays["coefficients"]], end, complete)


class DenseSolution:
    """Evaluates an adaptive solve anywhere in its span (in the solver's time coordinate).

    Attributes:
        starts, sizes: ``(num_steps,)`` start times and sizes of the accepted steps.
        coefficients: per state tensor, ``(num_steps, degree + 1, ...)``.
        end: the last time solved.
        complete: whether the solve succeeded (a bool tensor); if not, the times past
            ``end`` were not reached and evaluate to NaN, as the solve's outputs there.
    """

    def __init__(self, starts, sizes, coefficients, end, complete=True):
        self.starts = starts
        self.sizes = sizes
        self.coefficients = coefficients
        self.end = end
        self.complete = tf.convert_to_tensor(complete, tf.bool)

    @property
    def num_steps(self):
        return tf.shape(self.starts)[0]

    def evaluate(self, t):
        """The flat state at ``t`` (a scalar or a 1-D tensor of times; results get its shape
        as a leading axis). Times are clipped into ``[start, end]``; past the ``end`` of a
        failed solve the state is NaN."""
        t = tf.convert_to_tensor(t, self.starts.dtype)
        scalar = t.shape.rank == 0
        times = tf.reshape(t, [-1])
        unreached = ~self.complete & (times > self.end)
        times = tf.clip_by_value(times, self.starts[0], self.end)
        index = tf.clip_by_value(
            tf.searchsorted(self.starts, times, side="right") - 1, 0, self.num_steps - 1)
        theta = (times - tf.gather(self.starts, index)) / tf.gather(self.sizes, index)
        values = []
        for coefficients in self.coefficients:
            per_time = tf.gather(coefficients, index)  # (T, degree + 1, ...)
            shape = tf.concat([tf.shape(theta), tf.ones([tf.rank(per_time) - 2], tf.int32)], 0)
            th = tf.reshape(theta, shape)
            [value] = interpolation.evaluate(
                [tf.unstack(per_time, num=coefficients.shape[1], axis=1)], th)
            value = tf.where(tf.reshape(unreached, shape), tf.constant(float("nan"), value.dtype),
                             value)
            values.append(value[0] if scalar else value)
        return values
