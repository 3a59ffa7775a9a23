"""Checkpointed backpropagation: the exact gradient of the discretisation in O(sqrt(N)) memory.

``Backprop`` keeps every step's activations for the backward pass: memory
grows linearly with the number of solver iterations ``N`` (accepted and
rejected trial steps). ``Checkpointed`` gives the same gradient (the solver's
operations are replayed exactly) with memory that grows like ``sqrt(N)``:

1. forward: the solve runs without a tape and counts its iterations ``N``;
2. backward, first pass: the solve runs again without a tape and keeps the
   loop's core state (time, step size, state, derivative, controller and event
   state: a few state-sized tensors) every ``K`` iterations, ``K = ceil(sqrt(N))``
   by default (``ceil(N / checkpoints)`` with ``checkpoints``);
3. backward, second pass: from the last checkpoint to the first, ``K``
   iterations are replayed under a tape and differentiated with the
   cotangents of their end state and of the outputs they wrote.

For an adaptive solver ``N`` is known only after the forward solve, which is
why the checkpoints are taken in a second pass: memory ``~ (N / K) * core + K *
one iteration's tape``, time about one forward solve more than ``Backprop``
(the replay under the tape is what ``Backprop``'s forward costs). Each replay
loop has a static bound (``K <= ceil(sqrt(max_num_steps))``), so the whole
gradient also compiles with XLA.

Recursive (binomial, "revolve") checkpointing, with logarithmic memory and
more recomputation, is not implemented.
"""

import math

import tensorflow as tf

from keras_implicit import validation
from keras_implicit.ops import ode_gradients
from keras_implicit.ops.ode_gradients import ODE_GRADIENTS, ODEGradient, require_differentiable
from keras_implicit.ops.stats import ODEStats


@ODE_GRADIENTS.register("checkpointed")
class Checkpointed(ODEGradient):
    """Backpropagation through the solver with checkpoints: ``Backprop``'s gradient, less memory.

    Args:
        checkpoints: the number of stored loop states; ``None`` (default)
            chooses ``ceil(sqrt(N))`` for ``N`` solver iterations, which
            balances the checkpoints against the replayed segment's tape.

    Example:
        >>> ki.ops.odeint(fn, y0, t, solver="rk4", num_steps=1000,
        ...               gradient=ki.ops.Checkpointed())
    """

    name = "checkpointed"

    def __init__(self, checkpoints=None):
        self.checkpoints = validation.optional(validation.positive_int, "checkpoints",
                                               checkpoints)

    def check(self, solver):
        require_differentiable(self, solver)
        if not hasattr(solver, "make_loop"):
            raise ValueError(f"Checkpointed needs a solver that exposes its loop (make_loop), "
                             f"such as 'dopri5', 'bosh3', 'rk4', 'midpoint', 'euler'. "
                             f"Received: solver={solver.name!r}")

    def get_config(self):
        return {"checkpoints": self.checkpoints}

    def integrate(self, problem):
        return _solve_checkpointed(problem, self.checkpoints)


def _make_loop(problem, params):
    return problem.solver.make_loop(
        problem.dynamics(params), problem.times, problem.solver_options,
        first_step=problem.first_step, dense=problem.dense, event_fn=problem.event_fn,
        step_fn_wrapper=problem.step_fn_wrapper, jump_times=problem.jump_times)


def _differentiable(loop, core):
    """The floating leaves of the core that carry gradients, flat."""
    leaves = tf.nest.flatten({k: core[k] for k in loop.differentiable_keys})
    return [x for x in leaves if x.dtype.is_floating]


def _replace_differentiable(loop, core, values):
    keys = loop.differentiable_keys
    leaves = tf.nest.flatten({k: core[k] for k in keys})
    values = iter(values)
    leaves = [next(values) if x.dtype.is_floating else x for x in leaves]
    return {**core, **tf.nest.pack_sequence_as({k: core[k] for k in keys}, leaves)}


def _solve_checkpointed(problem, checkpoints):
    num_y, num_p = len(problem.y0), len(problem.params)
    box = {}

    @tf.custom_gradient
    def forward(*inputs):
        ys, ps = list(inputs[:num_y]), list(inputs[num_y:])
        loop = _make_loop(problem, ps)
        final = loop.complete(loop.run(loop.initial_state(ys)))
        result = loop.result(final)
        stats = ODEStats.from_solve(result.stats, compiled=problem.compiled)
        box.update(result=result, stats=stats)
        iterations = _iterations(final)

        def grad_fn(*upstream, variables=None):
            variables = list(variables or [])
            grads = _backward(problem, ys, ps, variables, list(upstream), iterations,
                              checkpoints, result)
            return (grads[: num_y + num_p], grads[num_y + num_p:]) if variables else grads

        return ode_gradients.differentiable_outputs(result), grad_fn

    outputs = forward(*problem.y0, *problem.params)
    return ode_gradients.with_differentiable_outputs(box["result"], outputs), box["stats"]


def _iterations(state):
    """The number of loop iterations a final state went through."""
    if "accepted" in state:
        return state["accepted"] + state["rejected"]
    return state["steps"]


def _backward(problem, ys, ps, variables, upstream, iterations, checkpoints, result):
    num_y = len(ys)
    if checkpoints is None:
        segment = tf.cast(tf.math.ceil(tf.sqrt(tf.cast(iterations, tf.float64))), tf.int32)
        static_bound = math.isqrt(int(problem.solver_options.max_num_steps)) + 2
    else:
        segment = (iterations + checkpoints - 1) // checkpoints
        static_bound = None
    segment = tf.maximum(segment, 1)
    num_segments = tf.maximum((iterations + segment - 1) // segment, 1)

    grad_states = [tf.zeros_like(s) if g is None else tf.convert_to_tensor(g)
                   for g, s in zip(upstream[:num_y], result.states)]
    rest = upstream[num_y:]
    final_cotangents = []
    if result.events is not None:
        final_cotangents = [tf.zeros_like(result.events.times) if rest[0] is None else rest[0]]
        final_cotangents += [tf.zeros_like(s) if g is None else g
                             for g, s in zip(rest[1:1 + num_y], result.events.states)]
        rest = rest[1 + num_y:]
    grad_dense = []
    if result.dense is not None:
        grad_dense = [tf.zeros_like(c) if g is None else g
                      for g, c in zip(rest[:num_y], result.dense.coefficients)]

    # First pass: the core state at the start of every segment.
    loop = _make_loop(problem, ps)
    state = loop.initial_state(ys)
    core0 = loop.core(state)
    leaves0 = tf.nest.flatten(core0)
    arrays = [tf.TensorArray(x.dtype, size=num_segments, element_shape=x.shape)
              for x in leaves0]

    def store(s, state, arrays):
        leaves = tf.nest.flatten(loop.core(state))
        arrays = [ta.write(s, x) for ta, x in zip(arrays, leaves)]
        return s + 1, loop.run(state, max_iterations=segment), arrays

    _, _, arrays = tf.while_loop(lambda s, *_: s < num_segments, store, (0, state, arrays),
                                 maximum_iterations=static_bound)

    # Second pass: replay the segments under a tape, from the last to the first.
    def replay(s, cotangents, param_grads, variable_grads, y_grads):
        core = tf.nest.pack_sequence_as(core0, [ta.read(s) for ta in arrays])
        first, last = tf.equal(s, 0), tf.equal(s, num_segments - 1)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            local_ps = [tf.identity(p) for p in ps]
            local_ys = [tf.identity(y) for y in ys]
            starts = _differentiable(loop, core)
            tape.watch(local_ps + local_ys + starts + variables)
            segment_loop = _make_loop(problem, local_ps)
            start = tf.cond(first, lambda: segment_loop.initial_core(local_ys),
                            lambda: _replace_differentiable(segment_loop, core, starts))
            start = segment_loop.with_arrays(start)
            start["outputs"] = tf.cond(
                first, lambda: [ta.write(0, y) for ta, y in zip(start["outputs"], local_ys)],
                lambda: list(start["outputs"]))
            first_index = tf.where(first, 0, start["out_index"])
            end = segment_loop.run(start, max_iterations=segment)
            end = tf.cond(last, lambda: segment_loop.complete(end), lambda: end)
            emitted = segment_loop.emitted({**start, "out_index": first_index}, end)
            targets = _differentiable(segment_loop, segment_loop.core(end)) + emitted
            finals = []
            if final_cotangents:
                events = segment_loop.events_of(end)
                finals = [events.times] + list(events.states)
        indices = tf.range(first_index, end["out_index"])
        output_grads = list(cotangents) + [tf.gather(g, indices) for g in grad_states]
        if grad_dense:
            dense_indices = tf.range(start["dense_count"], end["dense_count"])
            output_grads += [tf.gather(g, dense_indices) for g in grad_dense]
        if finals:
            targets += finals
            output_grads += [tf.where(last, g, tf.zeros_like(g)) for g in final_cotangents]
        grads = tape.gradient(targets, starts + local_ps + local_ys + variables,
                              output_gradients=output_grads,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        n = len(starts)
        cotangents = grads[:n]
        param_grads = [a + b for a, b in zip(param_grads, grads[n: n + len(ps)])]
        y_grads = [a + b for a, b in zip(y_grads, grads[n + len(ps): n + len(ps) + len(ys)])]
        variable_grads = [a + tf.convert_to_tensor(b) for a, b in
                          zip(variable_grads, grads[n + len(ps) + len(ys):])]
        return s - 1, cotangents, param_grads, variable_grads, y_grads

    zero_core = [tf.zeros_like(x) for x in _differentiable(loop, core0)]
    _, _, param_grads, variable_grads, y_grads = tf.while_loop(
        lambda s, *_: s >= 0, replay,
        (num_segments - 1, zero_core, [tf.zeros_like(p) for p in ps],
         [tf.zeros(v.shape, v.dtype) for v in variables], [tf.zeros_like(y) for y in ys]),
        maximum_iterations=static_bound)
    return y_grads + param_grads + variable_grads
