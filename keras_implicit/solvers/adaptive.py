"""Adaptive explicit Runge–Kutta solvers driven by an embedded error estimate.

``AdaptiveRungeKutta`` runs any first-same-as-last tableau with an embedded
pair (Dormand–Prince 5(4) as ``"dopri5"``, Bogacki–Shampine 3(2) as
``"bosh3"``) in one ``tf.while_loop``: automatic initial step, a step-size
controller object (``step_control.IController`` by default, or a PID
controller, with ``min_step``/``max_step`` and ``jump_times``), dense output
at the requested times (steps are never shortened to hit an output time),
optionally the whole dense solution and terminal events, and a mixed RMS error
norm that can leave state components out (the adjoint seminorm). Every
operation is a plain TensorFlow op, so backpropagating through a solve gives
the exact gradient of the discretisation (the step sizes are constants); the
continuous adjoint in ``ops`` drives the same solver backwards in time.

Landing on an end time: a step that would come within 1% of the end of the
interval (an end time or a jump time) is stretched or shortened to land on it
exactly (Hairer & Wanner's DOPRI5 does the same), and the step size proposed
after landing is never smaller than the last full proposal. So a remainder of
rounding size never becomes the next step size (an adjoint solve warm-starts
each interval with it).

A solve always terminates: NaN/Inf states are rejected and shrink the step
until it underflows (status ``NON_FINITE``); ``max_num_steps`` bounds the
loop (status ``MAX_STEPS_REACHED``).
"""

import tensorflow as tf

from keras_implicit import user_warnings
from keras_implicit.solvers import base
from keras_implicit.solvers import dense as dense_lib
from keras_implicit.solvers import events as events_lib
from keras_implicit.solvers import interpolation
from keras_implicit.solvers import loop as loop_lib
from keras_implicit.solvers import runge_kutta
from keras_implicit.solvers import state as state_ops
from keras_implicit.solvers import step_control
from keras_implicit.solvers.initial_step import resolve_first_step
from keras_implicit.solvers.status import Status

_LEGACY_CONTROLLER_OPTIONS = ("safety", "min_factor", "max_factor")


class AdaptiveRungeKutta(base.ODESolver):
    """An embedded Runge–Kutta pair with error control and dense output.

    Args:
        tableau: a :class:`ButcherTableau` with ``b_error`` and the first
            same as last property (or a shipped tableau's name, or its config).
        safety, min_factor, max_factor: deprecated (keras_implicit 0.1.0):
            pass ``step_control=ki.solvers.IController(safety=...)`` to
            ``odeint`` or the layer instead. Still honoured when given.

    Example:
        >>> solver = AdaptiveRungeKutta(runge_kutta.DORMAND_PRINCE)
        >>> ki.ops.odeint(fn, y0, times, solver=solver)
    """

    adaptive = True
    differentiable = True
    elementwise = True
    reports_next_step = True
    supports_error_mask = True
    supports_events = True
    supports_dense = True
    supports_step_control = True

    def __init__(self, tableau, safety=None, min_factor=None, max_factor=None):
        tableau = runge_kutta.get_tableau(tableau)
        if tableau.b_error is None:
            raise ValueError(
                f"An adaptive solver needs an embedded error estimate (b_error). "
                f"Received: tableau={tableau.name!r}")
        if not tableau.fsal:
            raise ValueError(
                f"AdaptiveRungeKutta needs a first-same-as-last tableau. Received: "
                f"tableau={tableau.name!r}")
        self.tableau = tableau
        self.name = tableau.name
        self.order = tableau.order
        legacy = {k: v for k, v in zip(_LEGACY_CONTROLLER_OPTIONS, (safety, min_factor, max_factor))
                  if v is not None}
        self._legacy_options = legacy
        self._legacy_controller = None
        if legacy:
            self._legacy_controller = step_control.IController(**legacy)
            user_warnings.warn(
                f"AdaptiveRungeKutta({', '.join(f'{k}={v}' for k, v in legacy.items())}) is "
                f"deprecated: pass step_control=ki.solvers.IController(...) to odeint or the "
                f"layer instead.", DeprecationWarning)

    def default_controller(self):
        """The controller used when ``odeint`` gets no ``step_control``."""
        return self._legacy_controller or step_control.IController()

    def get_config(self):
        return {"tableau": runge_kutta.serialize_tableau(self.tableau), **self._legacy_options}

    def trial_step(self, fn, t, h, t_last, y, f, rtol, atol, error_mask=None, midpoint=True):
        """One trial step from ``(t, y)`` with derivative ``f``, of size ``h``.

        The stages at the step's end (the last one, at the new solution, first
        same as last, and any other with ``c = 1``) are evaluated at ``t_last``
        (``t + h``, or just before a jump time: a step that lands on a jump
        sees only the dynamics of its own side).

        Returns:
            ``(y_new, f_new, y_mid, ratio)``: the new state, its derivative,
            the state at ``t + h / 2`` (``None`` without ``b_mid``, or with
            ``midpoint=False``: no caller will interpolate inside the step) and
            the error ratio (control dtype; the step is good if <= 1).
        """
        tab = self.tableau
        ks = [f]
        y_new = None
        for i in range(1, tab.num_stages):
            y_i = state_ops.combine(y, h, tab.a[i], ks)
            if i == tab.num_stages - 1:
                y_new = y_i
                t_i = t_last
            elif tab.c[i] == 1.0:  # dopri5's 6th stage: on the step's side of a jump time too
                t_i = t_last
            else:
                t_i = t + tab.c[i] * h
            ks.append(fn(t_i, y_i))
        error_weights = [b - e for b, e in zip(tab.b, tab.b_error)]
        error = state_ops.combine(None, h, error_weights, ks)
        ratio = state_ops.error_ratio(error, y, y_new, rtol, atol, error_mask)
        y_mid = (state_ops.combine(y, h, tab.b_mid, ks)
                 if midpoint and tab.b_mid is not None else None)
        return y_new, ks[-1], y_mid, tf.cast(ratio, t.dtype)

    def make_loop(self, fn, times, options, *, error_mask=None, first_step=None, f0=None,
                  dense=False, event_fn=None, step_fn_wrapper=None, jump_times=None):
        """The solve as a :class:`SolverLoop` (arguments as for ``integrate``)."""
        return _AdaptiveLoop(self, fn, times, options, error_mask, first_step, f0, dense,
                             event_fn, step_fn_wrapper, jump_times)

    def integrate(self, fn, y0, times, options, *, error_mask=None, first_step=None, f0=None,
                  dense=False, event_fn=None, step_fn_wrapper=None, jump_times=None):
        loop = self.make_loop(fn, times, options, error_mask=error_mask, first_step=first_step,
                              f0=f0, dense=dense, event_fn=event_fn,
                              step_fn_wrapper=step_fn_wrapper, jump_times=jump_times)
        return loop.result(loop.complete(loop.run(loop.initial_state(list(y0)))))


class _AdaptiveLoop(loop_lib.SolverLoop):
    """The loop of one adaptive solve (see the module docstring)."""

    ARRAYS = ("outputs", "dense")

    def __init__(self, solver, fn, times, options, error_mask, first_step, f0, dense, event_fn,
                 step_fn_wrapper, jump_times):
        self.solver = solver
        self.fn = fn
        self.times = times
        self.dtype = times.dtype
        self.num_times = tf.shape(times)[0]
        self.static_num_times = tf.compat.dimension_value(times.shape[0])
        self.t0, self.t_end = times[0], times[-1]
        self.controller = options.step_control or solver.default_controller()
        self.rtol, self.atol = options.rtol, options.atol
        self.max_num_steps = self.max_iterations = options.max_num_steps
        self.error_mask = error_mask
        self.first_step = first_step
        self.f0 = f0
        self.tracker = None if event_fn is None else events_lib.EventTracker(event_fn, self.dtype)
        self.recorder = None if not dense else dense_lib.DenseRecorder(
            4 if solver.tableau.b_mid is not None else 3, self.dtype)
        self.has_jumps = jump_times is not None
        self.jumps = step_control.inner_jump_times(jump_times, self.t0, self.t_end, self.dtype)
        self.num_jumps = tf.shape(self.jumps)[0]
        eps = tf.constant(state_ops.finfo(self.dtype).eps, self.dtype)
        # A step is too small once it is below 16 ulps of the time it starts from (t + h
        # barely moves); near t = 0, below 16 eps of eps times the interval's length. A floor
        # relative to the interval's end (or to 1) failed easy float32 solves over long
        # intervals: dy/dt = 0 on [0, 10] starts with a step of 1e-6 < 16 eps * 10.
        self.min_dt_per_time = 16.0 * eps
        self.min_dt_floor = 16.0 * eps * eps * tf.abs(self.t_end - self.t0)
        self.min_step = tf.constant(self.controller.min_step, self.dtype)
        self.max_step = tf.constant(self.controller.max_step, self.dtype)
        self.new_evals = solver.tableau.num_stages - 1
        self.error_order = solver.tableau.error_order
        self.differentiable_keys = ("y", "f") + (("events",) if event_fn is not None else ())

        # Only outputs strictly inside a step, events and the dense solution use the
        # step's polynomial. A solve to its end time alone (two times; the last step
        # lands on it) skips the midpoint, a state-sized combination per step and its
        # gradient, and writes its one output after the loop (``complete``), not from
        # a loop nested in each step.
        self.interpolates = (event_fn is not None or dense or self.static_num_times is None
                             or self.static_num_times > 2)

        def trial(t, h, t_last, y, f, event_state):
            step_fn = fn if self.tracker is None else self.tracker.mask(fn, event_state)
            return solver.trial_step(step_fn, t, h, t_last, y, f, self.rtol, self.atol,
                                     error_mask, midpoint=self.interpolates)

        self.attempt = trial if step_fn_wrapper is None else step_fn_wrapper(trial)

    def initial_core(self, y0):
        nfe = tf.constant(0, tf.int32)
        f0 = self.f0
        if f0 is None:
            f0 = self.fn(self.t0, y0)
            nfe += 1
        dt0, extra = resolve_first_step(self.first_step, self.fn, self.t0, y0, f0,
                                        self.solver.order, self.rtol, self.atol, self.error_mask)
        zero = tf.constant(0, tf.int32)
        finite = state_ops.all_finite(f0) & state_ops.all_finite(y0)
        state = {
            "t": self.t0, "dt": tf.stop_gradient(tf.cast(dt0, self.dtype)), "y": list(y0),
            "f": list(f0), "out_index": tf.constant(1, tf.int32), "nfe": nfe + extra,
            "accepted": zero, "rejected": zero,
            "status": tf.where(finite, Status.RUNNING, Status.NON_FINITE),
            "controller": self.controller.initial_state(self.dtype),
            "jump_index": tf.constant(0, tf.int32),
        }
        if self.tracker is not None:
            state["events"] = self.tracker.initial_state(self.t0, y0)
        if self.recorder is not None:
            state["dense_count"] = tf.constant(0, tf.int32)
        return state

    def fresh_arrays(self, state):
        arrays = {"outputs": [
            tf.TensorArray(y.dtype, size=self.num_times, element_shape=y.shape)
            for y in state["y"]]}
        if self.recorder is not None:
            arrays["dense"] = self.recorder.arrays(state["y"])
        return arrays

    def emitted(self, start, end):
        indices = tf.range(start["out_index"], end["out_index"])
        values = [ta.gather(indices) for ta in end["outputs"]]
        if self.recorder is not None:
            values += self.recorder.gather(end["dense"], start["dense_count"],
                                           end["dense_count"])
        return values

    def _write_outputs(self, state, accept, t, h, t_new, y_new, coefficients):
        """Writes the outputs at requested times in ``(t, t_new]`` of an accepted step.

        ``coefficients`` is a function: the step's polynomial is built only
        when a requested time falls strictly inside the step (an output at
        the step's end is ``y_new`` itself), so steps without outputs cost no
        interpolation, in the forward pass or its gradient.
        """
        times, num_times = self.times, self.num_times

        def cond(i, _):
            next_time = times[tf.minimum(i, num_times - 1)]
            return accept & (i < num_times) & (next_time <= t_new)

        def body(i, outs):
            theta = (times[i] - t) / h
            values = tf.cond(
                theta >= 1.0, lambda: [tf.identity(v) for v in y_new],
                lambda: interpolation.evaluate(coefficients(), theta))
            if self.tracker is not None:
                values = self.tracker.hold(state["events"], times[i], values)
            return i + 1, [ta.write(i, v) for ta, v in zip(outs, values)]

        return tf.while_loop(cond, body, (state["out_index"], state["outputs"]),
                             maximum_iterations=self.static_num_times)

    def body(self, state):
        t, dt, y, f = state["t"], state["dt"], state["y"], state["f"]
        t_end = self.t_end
        index = state["jump_index"]
        if self.has_jumps:
            at_jump = index < self.num_jumps
            target = tf.where(at_jump, tf.minimum(self.jumps[tf.minimum(index, self.num_jumps - 1)],
                                                  t_end), t_end)
        else:
            at_jump, target = tf.constant(False), t_end
        dt = tf.clip_by_value(dt, self.min_step, self.max_step)
        lands = t + 1.01 * dt >= target
        h = tf.stop_gradient(tf.where(lands, target - t, dt))
        to_jump = lands & at_jump & (target < t_end)
        t_last = tf.where(lands, tf.where(to_jump, tf.math.nextafter(target, t), target), t + h)
        y_new, f_new, y_mid, ratio = self.attempt(t, h, t_last, y, f, state.get("events"))
        ratio = tf.stop_gradient(ratio)
        nfe = state["nfe"] + self.new_evals
        accept, factor, controller = self.controller.adapt(ratio, state["controller"],
                                                           self.error_order)
        finite = tf.math.is_finite(ratio)
        at_min_step = h <= self.min_step
        accept = accept | (at_min_step & finite)
        t_new = tf.where(lands, target, t + h)
        new = dict(state)

        def polynomial(y_end=y_new, f_end=f_new):
            return interpolation.coefficients(y, y_end, f, f_end, h, y_mid)

        # Events and the dense solution need every accepted step's polynomial.
        coefficients = None
        if self.tracker is not None or self.recorder is not None:
            coefficients = polynomial()
        if self.tracker is not None:
            new["events"], y_new = self.tracker.update(state["events"], accept, t, h, t_new,
                                                       y_new, coefficients)
            # A sample frozen at its event carries a zero derivative from now on.
            f_new = [events_lib.batch_where(new["events"]["fired"], tf.zeros_like(v), v)
                     for v in f_new]
        if self.interpolates:
            new["out_index"], new["outputs"] = self._write_outputs(
                new, accept, t, h, t_new, y_new,
                polynomial if coefficients is None else (lambda: coefficients))
        if self.recorder is not None:
            new["dense_count"], new["dense"] = self.recorder.record(
                state["dense_count"], state["dense"], accept, t, h, coefficients)
        if self.has_jumps:
            # Restart at a jump: a fresh derivative from the right of the jump time.
            restart = accept & to_jump
            fresh_fn = self.fn
            if self.tracker is not None:
                fresh_fn = self.tracker.mask(self.fn, new["events"])
            # Just past the jump: dynamics that give the jump time its left-hand value
            # (t <= tau) must restart from the right-hand one.
            past_jump = tf.math.nextafter(target, t_end)
            f_new = tf.cond(restart,
                            lambda: [tf.identity(v) for v in fresh_fn(past_jump, y_new)],
                            lambda: [tf.identity(v) for v in f_new])
            nfe += tf.cast(restart, tf.int32)
            new["jump_index"] = index + tf.cast(restart, tf.int32)
        new["y"], new["f"] = state_ops.choose(accept, (y_new, f_new), (y, f))
        new["t"] = tf.where(accept, t_new, t)
        new["controller"] = controller
        dt_next = h * factor
        # After landing on an end or jump time, keep the last full step's proposal.
        dt_next = tf.where(accept & lands, tf.maximum(dt_next, dt), dt_next)
        new["dt"] = tf.stop_gradient(tf.clip_by_value(dt_next, self.min_step, self.max_step))
        new["nfe"] = nfe
        new["accepted"] = state["accepted"] + tf.cast(accept, tf.int32)
        new["rejected"] = state["rejected"] + 1 - tf.cast(accept, tf.int32)
        finished = accept & lands & (target >= t_end)
        event_failed = tf.constant(False)
        if self.tracker is not None:
            finished = finished | (accept & self.tracker.all_fired(new["events"]))
            event_failed = self.tracker.failed(new["events"])
        too_small = (new["dt"] < tf.maximum(self.min_dt_per_time * tf.abs(new["t"]),
                                            self.min_dt_floor)) | (~finite & at_min_step)
        new["status"] = tf.where(
            event_failed, Status.EVENT_NON_FINITE,
            tf.where(finished, Status.SUCCESS,
                     tf.where(too_small,
                              tf.where(finite, Status.STEP_SIZE_TOO_SMALL, Status.NON_FINITE),
                              tf.where(new["accepted"] + new["rejected"] >= self.max_num_steps,
                                       Status.MAX_STEPS_REACHED, Status.RUNNING))))
        return new

    def complete(self, state):
        """Writes the outputs the loop did not reach.

        A solve stopped early still returns every output so the caller can
        raise a clear error or inspect the status: NaN where a failed solve
        did not reach, the held state where every sample's event ended it.
        """
        status = tf.where(tf.equal(state["status"], Status.RUNNING), Status.MAX_STEPS_REACHED,
                          state["status"])
        held = tf.equal(status, Status.SUCCESS)

        def body(i, outs):
            values = [state_ops.nan_unless(held, v) for v in state["y"]]
            return i + 1, [ta.write(i, v) for ta, v in zip(outs, values)]

        if not self.interpolates:  # two times: the steps wrote nothing, the end is output 1
            out_index, outputs = body(state["out_index"], state["outputs"])
        else:
            out_index, outputs = tf.while_loop(lambda i, _: i < self.num_times, body,
                                               (state["out_index"], state["outputs"]),
                                               maximum_iterations=self.static_num_times)
        return {**state, "status": status, "out_index": out_index, "outputs": outputs}

    def events_of(self, state):
        """The ``EventResult`` of a completed state (``None`` without events)."""
        if self.tracker is None:
            return None
        return self.tracker.finish(state["events"], self.t_end, state["y"])

    def result(self, state):
        states = [ta.stack() for ta in state["outputs"]]
        for s, y in zip(states, state["y"]):
            s.set_shape(tf.TensorShape([None]).concatenate(y.shape))
        stats = base.SolveStats(state["nfe"], state["accepted"], state["rejected"],
                                state["status"], state["t"], state["dt"],
                                None if self.tracker is None else state["events"]["steps"])
        dense = None if self.recorder is None else self.recorder.finish(
            state["dense"], state["t"], tf.equal(state["status"], Status.SUCCESS))
        return base.SolveResult(states, stats, dense, self.events_of(state))


base.ODE_SOLVERS.add("dopri5", lambda **kw: AdaptiveRungeKutta(runge_kutta.DORMAND_PRINCE, **kw),
                     AdaptiveRungeKutta)
base.ODE_SOLVERS.add("bosh3",
                     lambda **kw: AdaptiveRungeKutta(runge_kutta.BOGACKI_SHAMPINE, **kw),
                     AdaptiveRungeKutta)
