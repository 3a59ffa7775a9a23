"""Step-size controllers of the adaptive solvers: I (the default) and PID, as small objects.

A controller turns the error ratio of a trial step (the mixed RMS norm of the
error estimate over ``atol + rtol * |y|``; a step is good when it is <= 1)
into a decision and the factor by which the step size changes. The asymptotic
model of error control (Söderlind 2002) is ``r_n = C h_n^k`` with ``k`` the
order of the embedded error estimate plus one, and the PID controller sets

    h_{n+1} = h_n * safety * (1/r_n)^(b1) * (1/r_{n-1})^(b2) * (1/r_{n-2})^(b3)

with ``b1 = (pcoeff + icoeff + dcoeff) / k``, ``b2 = -(pcoeff + 2 dcoeff) / k``,
``b3 = dcoeff / k`` (diffrax's parametrisation; ``r`` are the ratios of the
last accepted steps). ``(pcoeff, icoeff, dcoeff) = (0, 1, 0)`` is the I
controller. Every controller also bounds the step (``min_step``,
``max_step``) and names ``jump_times`` where the solver must land exactly and
restart with a fresh derivative (discontinuities of the dynamics in time).

Admissible coefficients: in the asymptotic model ``log h_n`` follows
``z^3 - (1 - p - i - d) z^2 - (p + 2 d) z + d = 0``; the controller converges
when every root lies inside the unit circle, and settles on the tolerance only
with integral action, ``icoeff > 0``. Both are checked on construction: some
good filters need a negative ``pcoeff`` (Söderlind's H211PI is
``pcoeff=-1/6, icoeff=1/3``).
"""

import math

import numpy as np
import tensorflow as tf

from keras_implicit import validation
from keras_implicit.solvers.registry import Configured, Registry


class StepController(Configured):
    """Base class of step-size controllers.

    Args:
        safety: factor applied to the optimal step size, in (0, 1].
        min_factor: smallest factor by which one step may shrink the next, in (0, 1).
        max_factor: largest factor by which one step may grow the next, > 1.
        min_step: smallest step size, >= 0. A step of this size is accepted
            whatever its error (as diffrax's ``force_dtmin``), unless it is
            not finite.
        max_step: largest step size, > ``min_step`` (``inf``: none).
        jump_times: times at which the solver must stop exactly and restart
            with a fresh derivative (discontinuities of the dynamics in
            time), strictly increasing; each must lie within the solve's
            span (checked when the solve starts, where its times are known
            then; with times known only when the graph runs, a jump time
            outside the span is ignored).
    """

    name = None

    def __init__(self, safety=0.9, min_factor=0.2, max_factor=10.0, min_step=0.0,
                 max_step=math.inf, jump_times=None):
        self.safety = validation.check_float("safety", safety, 0.0, 1.0, exclusive_minimum=True)
        self.min_factor = validation.check_float("min_factor", min_factor, 0.0, 1.0,
                                                 exclusive_minimum=True, exclusive_maximum=True)
        self.max_factor = validation.check_float("max_factor", max_factor, 1.0,
                                                 exclusive_minimum=True)
        self.min_step = validation.nonnegative_float("min_step", min_step)
        self.max_step = validation.check_float("max_step", max_step, 0.0, exclusive_minimum=True,
                                               allow_infinite=True)
        if self.min_step >= self.max_step:
            raise ValueError(f"`min_step` must be smaller than `max_step`. Received: "
                             f"min_step={min_step}, max_step={max_step}")
        self.jump_times = _check_jump_times(jump_times)

    # Coefficients (p, i, d) of the PID law; the I controller is (0, 1, 0).
    coefficients = (0.0, 1.0, 0.0)

    def initial_state(self, dtype):
        """The controller's loop state: the inverse ratios of the last two accepted steps."""
        return (tf.ones([], dtype), tf.ones([], dtype))

    def adapt(self, ratio, state, error_order):
        """Decides on a trial step.

        Args:
            ratio: scalar error ratio of the trial step (float), >= 0 or not finite.
            state: the controller's loop state.
            error_order: the order of the embedded error estimate (an int).

        Returns:
            ``(accept, factor, state)``: whether the step is accepted, the factor
            by which the step size changes, and the new state.
        """
        dtype = ratio.dtype
        k = float(error_order + 1)
        p, i, d = self.coefficients
        finite = tf.math.is_finite(ratio)
        accept = finite & (ratio <= 1.0)
        inverse = 1.0 / tf.maximum(tf.where(finite, ratio, tf.ones_like(ratio)),
                                   tf.constant(1e-10, dtype))
        previous, before = state
        factor = self.safety * tf.pow(inverse, (p + i + d) / k)
        if p != 0.0 or d != 0.0:
            factor *= tf.pow(previous, -(p + 2.0 * d) / k)
        if d != 0.0:
            factor *= tf.pow(before, d / k)
        # A rejected step must shrink the next one.
        upper = tf.where(accept, tf.constant(self.max_factor, dtype),
                         tf.constant(self.safety, dtype))
        factor = tf.clip_by_value(factor, tf.constant(self.min_factor, dtype), upper)
        factor = tf.where(finite, factor, tf.constant(self.min_factor, dtype))
        # A zero error (e.g. linear dynamics) says nothing of the step size's trend: the
        # history records a neutral 1, so that it does not shrink the following steps.
        remembered = tf.where(ratio > 0, inverse, tf.ones_like(inverse))
        state = (tf.where(accept, remembered, previous), tf.where(accept, previous, before))
        return accept, tf.stop_gradient(factor), state

    def get_config(self):
        return {"safety": self.safety, "min_factor": self.min_factor,
                "max_factor": self.max_factor, "min_step": self.min_step,
                "max_step": self.max_step,
                "jump_times": None if self.jump_times is None else list(self.jump_times)}


STEP_CONTROLLERS = Registry("step-size controller", StepController, "step_control")


@STEP_CONTROLLERS.register("i")
class IController(StepController):
    """The integral (I) controller: ``h <- h * safety * (1 / ratio)^(1/k)``, clipped.

    The default of every adaptive solver (as in torchdiffeq and Hairer &
    Wanner's DOPRI5). Arguments: see :class:`StepController`.

    Example:
        >>> ki.ops.odeint(fn, y0, t, step_control=ki.solvers.IController(max_step=0.1))
    """

    name = "i"


@STEP_CONTROLLERS.register("pid")
class PIDController(StepController):
    """A PID step-size controller (Söderlind 2002, 2003; diffrax's parametrisation).

    Args:
        pcoeff, icoeff, dcoeff: the proportional, integral and derivative
            coefficients (see the module docstring for the law and the
            admissible region, which is checked). ``(0, 1, 0)`` is the I
            controller. For problems whose error estimate does not vary
            smoothly (mildly stiff ones) we recommend the PI controller
            ``pcoeff=0.2, icoeff=0.7``: on Van der Pol (mu = 10, rtol = atol =
            1e-6, t in [0, 20]) it rejects 20 steps where the I controller
            rejects 30, with 280 steps in all against 281. diffrax's smoother
            suggestions (``pcoeff=0.3, icoeff=0.3``) reject 12 but take 319.
        safety, min_factor, max_factor, min_step, max_step, jump_times: see
            :class:`StepController`.

    Example:
        >>> ki.ops.odeint(fn, y0, t, rtol=1e-6, atol=1e-6,
        ...               step_control=ki.solvers.PIDController(pcoeff=0.2, icoeff=0.7))
    """

    name = "pid"

    def __init__(self, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, safety=0.9, min_factor=0.2,
                 max_factor=10.0, min_step=0.0, max_step=math.inf, jump_times=None):
        super().__init__(safety, min_factor, max_factor, min_step, max_step, jump_times)
        p = validation.check_float("pcoeff", pcoeff)
        i = validation.check_float("icoeff", icoeff)
        d = validation.check_float("dcoeff", dcoeff)
        if not i > 0:
            raise ValueError(f"`icoeff` must be > 0: without integral action the step size "
                             f"does not settle on the tolerance. Received: pcoeff={pcoeff}, "
                             f"icoeff={icoeff}, dcoeff={dcoeff}")
        radius = max(abs(np.roots([1.0, -(1.0 - p - i - d), -(p + 2.0 * d), d])))
        if not radius < 1.0 - 1e-9:
            raise ValueError(
                f"These PID coefficients make an unstable controller: the roots of "
                f"z^3 - (1 - p - i - d) z^2 - (p + 2d) z + d reach modulus {radius:.4g} >= 1 "
                f"(admissible: every root inside the unit circle and icoeff > 0). Received: "
                f"pcoeff={pcoeff}, icoeff={icoeff}, dcoeff={dcoeff}")
        self.coefficients = (p, i, d)

    def get_config(self):
        p, i, d = self.coefficients
        return {"pcoeff": p, "icoeff": i, "dcoeff": d, **super().get_config()}


def _check_jump_times(jump_times):
    if jump_times is None:
        return None
    try:
        values = np.asarray(jump_times, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise validation.ArgumentTypeError(
            f"`jump_times` must be a list of numbers. "
            f"Received: jump_times={jump_times!r}") from None
    if values.size == 0:
        return None
    if not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0):
        raise ValueError(f"`jump_times` must be finite and strictly increasing. "
                         f"Received: jump_times={values.tolist()}")
    return tuple(float(v) for v in values)


def get(identifier, argument="step_control"):
    """A ``StepController`` from ``"i"``, ``"pid"``, a config dict or an instance."""
    return STEP_CONTROLLERS.get(identifier, argument)


def inner_jump_times(jump_times, t0, t_end, dtype):
    """The jump times strictly inside ``(t0, t_end)`` in increasing order, then ``t_end``
    for each of the others (a 1-D tensor of static length, as XLA needs): a jump at
    ``t_end`` is no jump."""
    if jump_times is None:
        return tf.zeros([1], dtype)
    jumps = tf.reshape(tf.cast(jump_times, dtype), [-1])
    jumps = tf.sort(tf.where((jumps > t0) & (jumps < t_end), jumps, t_end))
    # One spare entry at the end keeps the indexing in bounds when none is left.
    return tf.concat([jumps, tf.reshape(t_end, [1])], 0)
