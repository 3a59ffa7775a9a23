"""A zoo of ODEs with exact solutions (as torchdiffeq's tests keep one).

Each problem has ``fn(t, y)``, ``y0`` and ``exact(times)`` (the solution at
``times``, leading time axis), in float64 by default.
"""

import numpy as np
import tensorflow as tf


class LinearODE:
    """``dy/dt = A y``; exact solution ``expm(A (t - t0)) y0``.

    The default ``A`` is a damped rotation (eigenvalues -0.1 ± 1i) in 2-D; a
    ``dim`` > 2 gives a seeded random stable matrix.
    """

    def __init__(self, dim=2, batch=None, dtype=tf.float64, seed=0):
        rng = np.random.RandomState(seed)
        if dim == 2:
            a = np.array([[-0.1, 1.0], [-1.0, -0.1]])
        else:
            m = rng.randn(dim, dim) / np.sqrt(dim)
            a = m - m.T - 0.1 * np.eye(dim)
        self.a = tf.constant(a, dtype)
        shape = (dim,) if batch is None else (batch, dim)
        self.y0 = tf.constant(rng.uniform(0.5, 1.5, size=shape), dtype)
        self.dtype = dtype

    def fn(self, t, y):
        return tf.linalg.matvec(self.a, y)

    @staticmethod
    def clock(t):
        """The time the constant ``A`` integrates over: ``t`` itself."""
        return t

    def exact(self, times, t0=None):
        """``expm(A (c(t) - c(t0))) y0`` at each time, ``c`` the problem's ``clock``: one
        batched ``expm`` (a thousand eager ones took 9 s), broadcast over ``y0``'s batch."""
        times = tf.cast(times, self.dtype)
        t0 = times[0] if t0 is None else tf.cast(t0, self.dtype)
        spans = self.clock(times) - self.clock(t0)
        matrices = tf.linalg.expm(self.a * spans[:, None, None])
        dim = self.a.shape[-1]
        matrices = tf.reshape(matrices, [-1] + [1] * (self.y0.shape.rank - 1) + [dim, dim])
        return tf.linalg.matvec(matrices, self.y0)


class TimeDependentLinearODE(LinearODE):
    """``dy/dt = cos(t) A y``; exact solution ``expm(A (sin t - sin t0)) y0``."""

    def fn(self, t, y):
        return tf.cos(tf.cast(t, self.dtype)) * tf.linalg.matvec(self.a, y)

    @staticmethod
    def clock(t):
        """``sin t``, the integral of the ``cos t`` that scales ``A``."""
        return tf.sin(t)


class Logistic:
    """``dy/dt = r y (1 - y)``; exact ``1 / (1 + (1/y0 - 1) exp(-r (t - t0)))``."""

    def __init__(self, rate=1.5, dtype=tf.float64):
        self.rate = rate
        self.y0 = tf.constant([0.1, 0.5, 0.9], dtype)
        self.dtype = dtype

    def fn(self, t, y):
        return self.rate * y * (1.0 - y)

    def exact(self, times, t0=None):
        times = tf.cast(times, self.dtype)[:, None]
        t0 = times[0] if t0 is None else tf.cast(t0, self.dtype)
        return 1.0 / (1.0 + (1.0 / self.y0 - 1.0) * tf.exp(-self.rate * (times - t0)))


ODE_PROBLEMS = {
    "linear": LinearODE,
    "time_dependent_linear": TimeDependentLinearODE,
    "logistic": Logistic,
}
