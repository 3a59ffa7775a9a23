"""Fixed-grid explicit Runge–Kutta solvers: Euler, midpoint, RK4 (the paper's RK-Net).

``num_steps`` is the total number of steps over ``[times[0], times[-1]]``.
Every output time is a grid point: the interval between consecutive output
times gets ``ceil(num_steps * its length / whole span)`` equal steps (at
least one), so outputs carry the method's full order and the total is at
least ``num_steps``. The shares are computed in float64 and counted in int32
(``num_steps`` is at most ``max_num_steps`` <= 2**31 - 1, checked by ``ops``);
a step too small for the time dtype to move ``t`` ends the solve with status
``STEP_SIZE_TOO_SMALL`` instead of a silently wrong answer.
"""

import tensorflow as tf

from keras_implicit import validation
from keras_implicit.solvers import base
from keras_implicit.solvers import loop as loop_lib
from keras_implicit.solvers import runge_kutta
from keras_implicit.solvers import state as state_ops
from keras_implicit.solvers.status import Status


def steps_per_interval(times, num_steps):
    """Number of steps in each interval between consecutive output times (int32)."""
    times = tf.cast(times, tf.float64)
    span = times[-1] - times[0]
    share = (times[1:] - times[:-1]) / span * tf.cast(num_steps, tf.float64)
    # Shares that are whole numbers up to rounding (5.0000001) are not rounded up.
    count = tf.math.ceil(share - 1e-4)
    return tf.maximum(tf.cast(count, tf.int32), 1)


class FixedGridRungeKutta(base.ODESolver):
    """A Runge–Kutta method on a uniform grid per output interval.

    Args:
        tableau: a :class:`ButcherTableau` (its ``b_error`` is ignored), a
            shipped tableau's name or its config.

    Example:
        >>> ki.ops.odeint(fn, y0, [0.0, 1.0], solver="rk4", num_steps=10)
    """

    adaptive = False
    differentiable = True
    elementwise = True

    def __init__(self, tableau):
        self.tableau = runge_kutta.get_tableau(tableau)
        self.name = self.tableau.name
        self.order = self.tableau.order

    def get_config(self):
        return {"tableau": runge_kutta.serialize_tableau(self.tableau)}

    def check_options(self, num_steps, max_num_steps):
        if num_steps is None:
            raise ValueError(
                f"The fixed-grid solver {self.name!r} needs `num_steps`, the total number of "
                f"steps (an int >= 1). Received: num_steps=None")
        validation.positive_int("num_steps", num_steps)
        if num_steps > max_num_steps:
            raise ValueError(
                f"`num_steps` must not exceed `max_num_steps` (a bound on the work of one "
                f"solve; raise it to take more steps). Received: num_steps={num_steps}, "
                f"max_num_steps={max_num_steps}")

    def backward_num_steps(self, num_steps, times, interval):
        return steps_per_interval(times, num_steps)[interval]

    def step(self, fn, t, dt, y):
        tab = self.tableau
        ks = []
        for i in range(tab.num_stages):
            y_i = state_ops.combine(y, dt, tab.a[i], ks) if i else y
            ks.append(fn(t + tab.c[i] * dt, y_i))
        return state_ops.combine(y, dt, tab.b, ks)

    def make_loop(self, fn, times, options, *, step_fn_wrapper=None, **unused):
        """The solve as a :class:`SolverLoop`: one iteration per step, over all intervals."""
        return _FixedGridLoop(self, fn, times, options, step_fn_wrapper)

    def integrate(self, fn, y0, times, options, *, error_mask=None, first_step=None, f0=None,
                  dense=False, event_fn=None, step_fn_wrapper=None, jump_times=None):
        loop = self.make_loop(fn, times, options, step_fn_wrapper=step_fn_wrapper)
        return loop.result(loop.complete(loop.run(loop.initial_state(list(y0)))))


class _FixedGridLoop(loop_lib.SolverLoop):
    """A fixed-grid solve as one loop over its steps (interval by interval)."""

    differentiable_keys = ("y",)

    def __init__(self, solver, fn, times, options, step_fn_wrapper):
        num_steps = options.num_steps
        if not tf.is_tensor(num_steps):  # a tensor: one interval of an adjoint solve
            solver.check_options(num_steps, options.max_num_steps)
        self.solver = solver
        self.times = times
        self.num_times = tf.shape(times)[0]
        self.counts = steps_per_interval(times, num_steps)
        self.sizes = (times[1:] - times[:-1]) / tf.cast(self.counts, times.dtype)
        # Every step must move t in the time dtype (e.g. not 1e-9 steps at t = 1 in float32).
        self.representable = tf.reduce_all(times[:-1] + self.sizes > times[:-1])
        self.static_num_times = tf.compat.dimension_value(times.shape[0])
        # A static bound lets XLA size the tape of the loop (backprop under jit_compile=True).
        self.max_iterations = None if self.static_num_times is None or tf.is_tensor(
            num_steps) else num_steps + self.static_num_times

        def raw_step(t, dt, y):
            return solver.step(fn, t, dt, y)

        self.step = raw_step if step_fn_wrapper is None else step_fn_wrapper(raw_step)

    def initial_core(self, y0):
        zero = tf.constant(0, tf.int32)
        state = {"y": list(y0), "interval": zero, "position": zero, "out_index": tf.constant(1),
                 "steps": zero,
                 "status": tf.where(self.representable, Status.RUNNING,
                                    Status.STEP_SIZE_TOO_SMALL)}
        return state

    def fresh_arrays(self, state):
        return {"outputs": [tf.TensorArray(y.dtype, size=self.num_times, element_shape=y.shape)
                            for y in state["y"]]}

    def emitted(self, start, end):
        indices = tf.range(start["out_index"], end["out_index"])
        return [ta.gather(indices) for ta in end["outputs"]]

    def body(self, state):
        i, j = state["interval"], state["position"]
        dt = self.sizes[i]
        t = self.times[i] + tf.cast(j, self.times.dtype) * dt
        y = self.step(t, dt, state["y"])
        ends = tf.equal(j + 1, self.counts[i])
        outputs = tf.cond(ends, lambda: [ta.write(i + 1, v) for ta, v in zip(state["outputs"], y)],
                          lambda: list(state["outputs"]))
        interval = i + tf.cast(ends, tf.int32)
        done = interval >= self.num_times - 1
        status = tf.where(done, tf.where(state_ops.all_finite(y), Status.SUCCESS,
                                         Status.NON_FINITE), Status.RUNNING)
        return {**state, "y": y, "interval": interval,
                "position": tf.where(ends, tf.constant(0), j + 1),
                "out_index": state["out_index"] + tf.cast(ends, tf.int32),
                "steps": state["steps"] + 1, "outputs": outputs, "status": status}

    def complete(self, state):
        """Writes NaN into the outputs a refused solve (unrepresentable steps) did not reach."""

        def body(i, outs):
            return i + 1, [ta.write(i, state_ops.nan_unless(tf.constant(False), v))
                           for ta, v in zip(outs, state["y"])]

        out_index, outputs = tf.while_loop(lambda i, _: i < self.num_times, body,
                                           (state["out_index"], state["outputs"]),
                                           maximum_iterations=self.static_num_times)
        return {**state, "out_index": out_index, "outputs": outputs}

    def events_of(self, state):
        return None

    def result(self, state):
        states = [ta.stack() for ta in state["outputs"]]
        for s, y in zip(states, state["y"]):
            s.set_shape(tf.TensorShape([None]).concatenate(y.shape))
        steps = state["steps"]
        zero = tf.constant(0, tf.int32)
        final_time = tf.where(self.representable, self.times[-1], self.times[0])
        stats = base.SolveStats(steps * self.solver.tableau.num_stages, steps, zero,
                                state["status"], final_time, tf.zeros([], self.times.dtype))
        return base.SolveResult(states, stats, None, None)


for _name in ("euler", "midpoint", "rk4"):
    base.ODE_SOLVERS.add(_name, (lambda tableau: lambda: FixedGridRungeKutta(tableau))(
        runge_kutta.TABLEAUX[_name]), FixedGridRungeKutta)
