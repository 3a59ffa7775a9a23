"""The augmented ODE of a continuous normalizing flow, solved by ``ops.odeint``.

For ``dz/dt = f(z, t)`` the instantaneous change of variables (Chen et al.
2018, Theorem 1) gives ``d log p(z(t))/dt = -tr(df/dz)``. The flow integrates
the state together with

- ``log_det``: ``d/dt = tr(df/dz)`` (exact or Hutchinson), so that integrating
  from the start time to the end time gives the log-determinant of the
  Jacobian of the map ``z(start) -> z(end)``;
- on request the RNODE regularisers of Finlay et al. 2020:
  ``kinetic_energy``, ``d/dt = ||f||^2``, and ``jacobian_frobenius``,
  ``d/dt = ||df/dz||_F^2`` (exact, or ``||e^T df/dz||^2`` with the probe).

The Hutchinson probe is drawn once per solve and passed to ``odeint`` through
``params``, so that it stays fixed along the trajectory and the adjoint never
depends on a tensor captured by closure.
"""

import collections

import tensorflow as tf

from keras_implicit import validation
from keras_implicit.ops import trace as trace_lib
from keras_implicit.ops.odeint import odeint

TRACE_METHODS = ("hutchinson", "exact")
REGULARIZERS = ("kinetic_energy", "jacobian_frobenius")


class FlowSolution(
    collections.namedtuple(
        "FlowSolution",
        ["output", "log_det_jacobian", "kinetic_energy", "jacobian_frobenius", "stats"])):
    """The result of one solve of a flow.

    Attributes:
        output: the state at the end time, shaped like the input.
        log_det_jacobian: ``log |det d output / d input|`` per event (``None``
            when the solve was asked not to track it).
        kinetic_energy: ``integral of ||f||^2 dt`` per event over the
            trajectory (positive whatever the direction), or ``None`` if not
            requested.
        jacobian_frobenius: ``integral of ||df/dz||_F^2 dt`` per event, or ``None``.
        stats: the ``ODEStats`` of the solve (NFE, steps, backward NFE once a
            gradient has been taken).
    """

    __slots__ = ()


def check_trace_method(trace):
    return validation.known_name("trace estimator", "trace", trace, TRACE_METHODS)


def check_regularizers(regularizers):
    if regularizers is None:
        return ()
    if isinstance(regularizers, str):
        regularizers = (regularizers,)
    regularizers = tuple(regularizers)
    for name in regularizers:
        if name not in REGULARIZERS:
            raise ValueError(
                f"Unknown regulariser. Valid names: {list(REGULARIZERS)}. "
                f"Received: regularizers={list(regularizers)!r}")
    return tuple(name for name in REGULARIZERS if name in regularizers)


# Nothing here branches on tensor values: autograph would only spend seconds transpiling
# the solver when a tf.function (e.g. Keras fit) calls this.
@tf.autograph.experimental.do_not_convert
def integrate_flow(dynamics_fn, z, t_start, t_end, *, trace="hutchinson", noise="rademacher",
                   num_probes=1, regularizers=(), seed=None, log_det=True, odeint_options=None,
                   on_backward=None, fn_cache=None):
    """Solves the flow from ``t_start`` to ``t_end`` starting at ``z``.

    Args:
        dynamics_fn: ``dynamics_fn(t, z) -> dz/dt`` for ``z`` of shape
            ``(batch, *event)``; examples must not interact.
        z: ``(batch, *event)``, floating point.
        t_start, t_end: Python floats; ``t_end < t_start`` integrates backwards.
        trace: ``"hutchinson"`` or ``"exact"``.
        noise: ``"rademacher"`` or ``"gaussian"`` (Hutchinson probes).
        num_probes: probes per solve (the estimate averages over them).
        regularizers: names from ``REGULARIZERS`` to integrate.
        seed: ``None``, an int or a shape-[2] integer tensor for the probe.
        log_det: whether to integrate the log-determinant (``False`` with no
            regulariser solves the bare ODE: sampling needs no trace).
        odeint_options: keyword arguments of ``odeint`` (solver, rtol, ...).
        on_backward: passed to ``odeint``.
        fn_cache: optional dict in which the traced right-hand side is kept
            between solves (keyed by the estimator and regulariser options).

    Returns:
        A :class:`FlowSolution`.
    """
    dtype = z.dtype
    batch = tf.shape(z)[0]
    kinetic = "kinetic_energy" in regularizers
    frobenius = "jacobian_frobenius" in regularizers
    augmented = log_det or bool(regularizers)
    zeros = tf.zeros([batch], dtype)
    state = {"z": z}
    if augmented:
        state["log_det"] = zeros
    for name in regularizers:
        state[name] = zeros

    params = None
    if augmented and trace == "hutchinson":
        probe = trace_lib.sample_noise(
            tf.concat([[num_probes], tf.shape(z)], 0), noise, dtype, seed)
        params = {"noise": tf.ensure_shape(probe, [num_probes] + z.shape.as_list())}

    key = (trace, augmented, kinetic, frobenius)
    cache = {} if fn_cache is None else fn_cache
    if key not in cache:
        cache[key] = augmented_fn(dynamics_fn, trace, augmented, kinetic, frobenius)
    fn = cache[key]

    options = dict(odeint_options or {})
    times = tf.constant([t_start, t_end], dtype)
    if params is None:
        result = odeint(lambda t, y: fn(t, y, None), state, times, on_backward=on_backward,
                        **options)
    else:
        result = odeint(fn, state, times, params=params, on_backward=on_backward, **options)
    final = {name: value[-1] for name, value in result.states.items()}
    direction = 1.0 if t_end > t_start else -1.0
    regs = {name: direction * final[name] if name in final else None for name in REGULARIZERS}
    return FlowSolution(final["z"], final.get("log_det"), regs["kinetic_energy"],
                        regs["jacobian_frobenius"], result.stats)


def augmented_fn(dynamics_fn, trace, augmented, kinetic, frobenius):
    """The right-hand side ``fn(t, state, params)`` of the augmented ODE.

    A plain function: ``odeint``'s compile plan traces it once per solve (or
    XLA compiles it). A ``tf.function`` of its own, traced with relaxed
    shapes, made XLA treat every argument of a compiled solve as a
    compile-time constant and compile it again at every training step.
    """

    def fn(t, y, p):
        def f_of(x):
            return dynamics_fn(t, x)

        if not augmented:
            return {"z": f_of(y["z"])}
        if trace == "exact":
            out = trace_lib.exact_trace(f_of, y["z"], frobenius=frobenius)
        else:
            out = trace_lib.hutchinson_trace(f_of, y["z"], p["noise"], frobenius=frobenius)
        f = out[0]
        derivatives = {"z": f, "log_det": out[1]}
        if kinetic:
            event_axes = list(range(1, f.shape.rank))
            derivatives["kinetic_energy"] = tf.reduce_sum(tf.square(f), axis=event_axes)
        if frobenius:
            derivatives["jacobian_frobenius"] = out[2]
        return derivatives

    return fn
