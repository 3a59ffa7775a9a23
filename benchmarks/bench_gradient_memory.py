"""Memory and time of the ODE block's training step per gradient strategy as the interval grows.

The MNIST ODE block (6x6x64, dopri5 at 1e-3, batch 64) integrated over [0, T]
for T = 1, 2, 4, 8: the number of steps grows with T. ``Backprop`` keeps every
step's activations (memory linear in the steps), ``Checkpointed`` keeps the
core state (a few state-sized tensors) of every accepted step and replays the
steps one by one (linear, with a far smaller slope), ``Checkpointed(4)`` (as
``"checkpointed_4"``) keeps 4 core states and one segment's activations
(sublinear), ``Adjoint`` keeps none (flat). ``track_step_memory`` is the
step's own peak of TensorFlow's CPU allocator above what it held before (this
module switches the allocator's statistics on before TensorFlow starts, as
under asv, which runs each benchmark in a fresh process).

    python -m benchmarks.bench_gradient_memory [--intervals 1,2,4,8]
        [--gradients adjoint,checkpointed,checkpointed_4,backprop]
        # prints the table (each case in its own process)
"""

import os

from keras_implicit.experiments import measure

measure.enable_cpu_allocator_stats()

QUICK = os.environ.get("KERAS_IMPLICIT_BENCH_QUICK") == "1"
INTERVALS = [1.0] if QUICK else [1.0, 2.0, 4.0, 8.0]
GRADIENTS = ["adjoint", "checkpointed", "checkpointed_4", "backprop"]


def _gradient(name):
    """A gradient strategy from a benchmark parameter (``"checkpointed_4"``: 4 checkpoints)."""
    if name.startswith("checkpointed_"):
        import keras_implicit as ki

        return ki.ops.Checkpointed(int(name.rsplit("_", 1)[1]))
    return name


class GradientStepMemory:
    """One warm training step of the ODE block per gradient strategy and interval."""

    params = (INTERVALS, GRADIENTS)
    param_names = ["t1", "gradient"]
    timeout = 600

    def setup(self, t1, gradient):
        from . import bench_ode_block as block

        self.layer = block.make_block(_gradient(gradient), t1=t1)
        self.x = block.make_input(8 if QUICK else 64)
        self.step = block.make_train_step(self.layer)
        self.step(self.x)
        self.meter = measure.StepMemoryMeter()

    def time_train_step(self, t1, gradient):
        self.step(self.x)

    def track_step_memory(self, t1, gradient):
        return self.meter.measure(lambda: self.step(self.x))

    def track_nfe_forward(self, t1, gradient):
        self.step(self.x)
        return int(self.layer.solver_stats()["nfe_forward"])

    time_train_step.timeout = 600
    track_step_memory.unit = "bytes"
    track_nfe_forward.unit = "evaluations"


def _one(t1, gradient, repeats=5):
    """Runs one case in this (fresh) process; returns its row."""
    case = GradientStepMemory()
    case.setup(t1, gradient)
    memory = max(case.track_step_memory(t1, gradient) for _ in range(2))
    seconds = measure.median_seconds(lambda: case.step(case.x), repeats)
    return {"t1": t1, "gradient": gradient, "step_memory_mib": memory / 2**20,
            "seconds": seconds, "nfe_forward": case.track_nfe_forward(t1, gradient)}


def _arguments(argv):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", default=",".join(f"{t:g}" for t in INTERVALS),
                        help="the ends T of the intervals [0, T], comma-separated, each > 0")
    parser.add_argument("--gradients", default=",".join(GRADIENTS),
                        help=f"comma-separated, among {GRADIENTS}")
    args = parser.parse_args(argv)
    try:
        intervals = [float(t) for t in args.intervals.split(",")]
    except ValueError:
        intervals = []
    if not intervals or not all(0 < t < float("inf") for t in intervals):
        parser.error(f"--intervals must be comma-separated numbers > 0. "
                     f"Received: --intervals={args.intervals!r}")
    gradients = args.gradients.split(",")
    unknown = sorted(set(gradients) - set(GRADIENTS))
    if unknown:
        parser.error(f"--gradients must be among {GRADIENTS}. Received: {unknown}")
    return intervals, gradients


def main(argv=None):
    import json
    import subprocess
    import sys

    import numpy as np

    intervals, gradients = _arguments(argv)
    rows = []
    for t1 in intervals:
        for gradient in gradients:
            code = ("import json; from benchmarks import bench_gradient_memory as b; "
                    f"print(json.dumps(b._one({t1}, {gradient!r})))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    print("\n| T | NFE | adjoint MiB | checkpointed MiB | checkpointed(4) MiB | backprop MiB "
          "| checkpointed / backprop time | checkpointed(4) / backprop time |")
    print("|---|---|---|---|---|---|---|---|")
    by = {(r["t1"], r["gradient"]): r for r in rows}
    if set(gradients) == set(GRADIENTS):
        for t1 in intervals:
            a, c, c4, b = (by[(t1, g)] for g in GRADIENTS)
            print(f"| {t1:g} | {b['nfe_forward']} | {a['step_memory_mib']:.1f} | "
                  f"{c['step_memory_mib']:.1f} | {c4['step_memory_mib']:.1f} | "
                  f"{b['step_memory_mib']:.1f} | {c['seconds'] / b['seconds']:.2f} | "
                  f"{c4['seconds'] / b['seconds']:.2f} |")
    if len(intervals) > 1:  # a slope needs two intervals
        for gradient in gradients:
            nfe = np.log([by[(t, gradient)]["nfe_forward"] for t in intervals])
            memory = np.log([by[(t, gradient)]["step_memory_mib"] for t in intervals])
            print(f"{gradient}: memory ~ NFE^{np.polyfit(nfe, memory, 1)[0]:.2f}")


if __name__ == "__main__":
    main()
