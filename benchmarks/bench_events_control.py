"""What events and step-size controllers cost (issue 13's measurements).

- ``EventCost``: a batch of falling bodies (``y'' = -g`` from heights in
  [1, 20] m, float64, dopri5 at 1e-8) solved over [0, 3] s with and without
  an ``event_fn`` (height = 0). With the event each body stops at its own
  impact time, so the solve is shorter; ``track_cost_ratio`` therefore times
  the same solve with the event placed beyond the horizon (it never fires:
  the tracking alone) against no event, both in one process, alternating.
- ``ControllerCost``: the I-controller against the recommended PI controller
  (``PIDController(pcoeff=0.2, icoeff=0.7)``) on Van der Pol (mu = 10,
  rtol = atol = 1e-6, [0, 20]) and on the MNIST ODE block (6x6x64, dopri5
  1e-3, forward + adjoint backward): time, NFE and rejected steps.
"""

from . import common

EVENT_BATCH = common.quick(1024, 4)
REPEATS = common.quick(15, 1)


def falling_solve(event, horizon=3.0):
    """A compiled solve of ``EVENT_BATCH`` falling bodies; ``event`` is ``None``,
    ``"ground"`` (height 0) or ``"never"`` (height -1e6: tracked, never fired)."""
    import numpy as np
    import tensorflow as tf

    import keras_implicit as ki

    heights = tf.constant(np.linspace(1.0, 20.0, EVENT_BATCH), tf.float64)
    # A variable, not a constant: a solve of constants alone could be folded away.
    y0 = tf.Variable(tf.stack([heights, tf.zeros_like(heights)], axis=1))
    offset = {"ground": 0.0, "never": 1e6}.get(event)

    def falling(t, y):
        return tf.stack([y[:, 1], -9.81 * tf.ones_like(y[:, 0])], axis=1)

    event_fn = None if event is None else (lambda t, y: y[:, 0] + offset)

    @tf.function
    def solve():
        result = ki.ops.odeint(falling, tf.convert_to_tensor(y0), [0.0, horizon], rtol=1e-8,
                               atol=1e-8,
                               event_fn=event_fn)
        return result.states, result.stats.forward_nfe

    solve()
    return solve


class EventCost:
    """A falling-body batch with and without event tracking."""

    params = [["none", "ground", "never"]]
    param_names = ["event"]
    timeout = 300

    def setup(self, event):
        self.solve = falling_solve(None if event == "none" else event)

    def time_solve(self, event):
        self.solve()

    def track_nfe(self, event):
        return int(self.solve()[1])

    def track_cost_ratio(self, event):
        """Time with ``event`` / time without, medians of alternating repeats."""
        from keras_implicit.experiments.measure import median_seconds

        plain = falling_solve(None)
        ratios = []
        for _ in range(3):
            with_event = median_seconds(lambda: self.solve()[0].numpy(), REPEATS)
            without = median_seconds(lambda: plain()[0].numpy(), REPEATS)
            ratios.append(with_event / without)
        return sorted(ratios)[1]


def van_der_pol_solve(controller):
    import tensorflow as tf

    import keras_implicit as ki

    mu = 10.0

    def fn(t, y):
        return tf.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    control = ki.solvers.PIDController(pcoeff=0.2, icoeff=0.7) if controller == "pi" else None
    y0 = tf.Variable([2.0, 0.0], dtype=tf.float64)  # not a constant: see falling_solve

    @tf.function
    def solve():
        result = ki.ops.odeint(fn, tf.convert_to_tensor(y0), [0.0, 20.0], rtol=1e-6,
                               atol=1e-6, step_control=control, max_num_steps=100_000)
        return result.states, result.stats.forward_nfe, result.stats.rejected_steps

    solve()
    return solve


class ControllerVanDerPol:
    """I vs PI on Van der Pol, mu = 10, rtol = atol = 1e-6."""

    params = [["i", "pi"]]
    param_names = ["controller"]
    timeout = 300

    def setup(self, controller):
        self.solve = van_der_pol_solve(controller)

    def time_solve(self, controller):
        self.solve()

    def track_nfe(self, controller):
        return int(self.solve()[1])

    def track_rejected_steps(self, controller):
        return int(self.solve()[2])


class ControllerODEBlock:
    """I vs PI on the MNIST ODE block, forward + adjoint backward (batch 64)."""

    params = [["i", "pi"]]
    param_names = ["controller"]
    timeout = 300

    def setup(self, controller):
        import keras

        import keras_implicit as ki

        from .bench_ode_block import CHANNELS, GROUPS, SIZE, make_input, make_train_step

        keras.utils.set_random_seed(0)
        control = ki.solvers.PIDController(pcoeff=0.2, icoeff=0.7) if controller == "pi" else "i"
        dynamics = ki.applications.ODEBlockDynamics(CHANNELS, groups=GROUPS)
        self.layer = ki.layers.NeuralODE(dynamics, rtol=1e-3, atol=1e-3, step_control=control)
        self.layer.build((None, SIZE, SIZE, CHANNELS))
        self.x = make_input(common.quick(64, 8))
        self.step = make_train_step(self.layer)
        self.step(self.x)

    def time_train_step(self, controller):
        self.step(self.x)

    def track_nfe_forward(self, controller):
        self.step(self.x)
        return int(self.layer.solver_stats()["nfe_forward"])

    def track_nfe_backward(self, controller):
        self.step(self.x)
        return int(self.layer.solver_stats()["nfe_backward"])
