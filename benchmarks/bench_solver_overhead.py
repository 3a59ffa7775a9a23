"""Solver overhead: time of a solve / (NFE x time of one dynamics evaluation), per solver.

1.0 means the solver costs nothing beyond its dynamics evaluations; the
excess is step-size control, stage combinations and loop bookkeeping. Two
dynamics: the ODE-Net's block (``conv``: GroupNorm/ConcatConv2D on a 6x6x64
state, batch 32: the realistic, expensive case) and a small ``dense`` one
(ConcatDense 64 -> tanh, batch 32: the overhead shows). Forward solve over
[0, 1], tolerances 1e-3, fixed-grid solvers with 8 steps. One dynamics
evaluation is timed inside a ``tf.while_loop`` of chained evaluations so that
no per-call dispatch is counted. BDF is left out: its cost is dominated by
Jacobians and linear solves, which the NFE does not count.
"""

from . import common

SOLVERS = ["euler", "midpoint", "rk4", "bosh3", "dopri5", "tfp_dopri5"]
DYNAMICS = ["conv", "dense"]
BATCH = common.quick(32, 2)
FIXED_STEPS = 8
CHAINED = common.quick(32, 2)
REPEATS = common.quick(10, 1)


def make_dynamics(kind):
    import keras

    import keras_implicit as ki

    keras.utils.set_random_seed(0)
    if kind == "conv":
        layer, shape = ki.applications.ODEBlockDynamics(64, groups=32), (BATCH, 6, 6, 64)
    else:
        layer, shape = ki.layers.ConcatDense(64, activation="tanh"), (BATCH, 64)
    layer.build(shape)
    x = keras.random.normal(shape, seed=1)
    return layer, x


class SolverOverhead:
    """Forward solve time, NFE and the overhead ratio per solver and dynamics."""

    params = [SOLVERS, DYNAMICS]
    param_names = ["solver", "dynamics"]
    timeout = 300

    def setup(self, solver, dynamics):
        import tensorflow as tf

        import keras_implicit as ki

        layer, self.x = make_dynamics(dynamics)
        num_steps = None if solver in ("bosh3", "dopri5", "tfp_dopri5") else FIXED_STEPS

        @tf.function
        def solve(x):
            result = ki.ops.odeint(lambda t, y: layer(y, t=t), x, [0.0, 1.0], solver=solver,
                                   num_steps=num_steps, gradient="adjoint")
            return result.states[-1], result.stats.forward_nfe

        @tf.function
        def chained_evaluations(x):
            t = tf.constant(0.5, x.dtype)
            return tf.while_loop(lambda i, y: i < CHAINED,
                                 lambda i, y: (i + 1, layer(y, t=t)), (0, x))[1]

        self.solve, self.chained = solve, chained_evaluations
        _, nfe = solve(self.x)
        self.nfe = int(nfe)
        chained_evaluations(self.x)

    def time_solve(self, solver, dynamics):
        self.solve(self.x)

    def track_nfe(self, solver, dynamics):
        return self.nfe

    def track_overhead_ratio(self, solver, dynamics):
        from keras_implicit.experiments.measure import median_seconds

        solve_seconds = median_seconds(lambda: self.solve(self.x)[0].numpy(), REPEATS)
        evaluation_seconds = median_seconds(
            lambda: self.chained(self.x).numpy(), REPEATS) / CHAINED
        return solve_seconds / (self.nfe * evaluation_seconds)

    track_nfe.unit = "evaluations"
    track_overhead_ratio.unit = "ratio"
