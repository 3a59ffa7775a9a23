"""ki.bijectors.FFJORD vs tfp.bijectors.FFJORD in one process: log_prob + gradient.

The two share one Keras network (MLP 3 x 64 tanh, time concatenated to every
layer) and solve with Dormand-Prince at rtol = atol = 1e-5, adjoint gradients;
the step is the mean negative log-likelihood of a 2-D batch of 512 and its
gradient. Repeats alternate between the implementations so that a change of
machine load affects both. Run from the repository root:

    python -m benchmarks.compare_tfp_ffjord [--repeats 15] [--json out.json]

(or ``python benchmarks/compare_tfp_ffjord.py ...``, as its sibling scripts run).

Also reports the cost of one augmented evaluation relative to f alone
(Hutchinson vs exact trace) for D = 2, 16, 64, 784 with ``--trace-cost``.
Timings are wall-clock medians; nothing is asserted.
"""

import argparse
import os
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a script: the repository root holds `benchmarks`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import bench_ffjord, peers  # noqa: E402


def _median(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def compare(trace, repeats):
    steps = {}
    compile_seconds = {}
    for implementation in ("keras_implicit", "tfp"):
        step, x = bench_ffjord.make_log_prob_step(implementation, trace, batch=512,
                                                  hidden=(64, 64, 64), tolerance=1e-5)
        start = time.perf_counter()
        loss = float(step(x)[0])
        compile_seconds[implementation] = time.perf_counter() - start
        steps[implementation] = (step, x, loss)
    # Warm up again once every step exists: building the other side's step makes the next
    # call of an already traced one slow once (about 2 s here, with no retrace).
    for step, x, _ in steps.values():
        step(x)[0].numpy()
    samples = {name: [] for name in steps}
    for _ in range(repeats):
        for name, (step, x, _) in steps.items():
            samples[name].append(_median(lambda: step(x)[0].numpy(), 1)[0])
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "trace": trace,
        "seconds": medians,
        "ratio_keras_implicit_over_tfp": medians["keras_implicit"] / medians["tfp"],
        "first_call_seconds": compile_seconds,
        "loss": {name: value[2] for name, value in steps.items()},
    }


def trace_cost(repeats):
    rows = []
    for dimension in (2, 16, 64, 784):
        for trace in ("hutchinson", "exact"):
            bench = bench_ffjord.TraceCost()
            bench.setup(dimension, trace)
            augmented = _median(lambda: bench.augmented(bench.z).numpy(), repeats)[0]
            plain = _median(lambda: bench.dynamics_only(bench.z).numpy(), repeats)[0]
            rows.append({"dimension": dimension, "trace": trace,
                         "seconds_per_evaluation": augmented / bench.chained,
                         "ratio_to_f": augmented / plain})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--trace-cost", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    report = {"log_prob_and_gradient": [compare(trace, args.repeats)
                                        for trace in ("hutchinson", "exact")]}
    for row in report["log_prob_and_gradient"]:
        print(f"{row['trace']:>10}: keras_implicit {1e3 * row['seconds']['keras_implicit']:8.1f} ms"
              f"  tfp {1e3 * row['seconds']['tfp']:8.1f} ms  ratio "
              f"{row['ratio_keras_implicit_over_tfp']:.2f}  (first call "
              f"{row['first_call_seconds']['keras_implicit']:.1f} s vs "
              f"{row['first_call_seconds']['tfp']:.1f} s; loss {row['loss']['keras_implicit']:.6f}"
              f" vs {row['loss']['tfp']:.6f})")
    if args.trace_cost:
        report["trace_cost"] = trace_cost(args.repeats)
        for row in report["trace_cost"]:
            print(f"D={row['dimension']:4d} {row['trace']:>10}: "
                  f"{1e3 * row['seconds_per_evaluation']:8.3f} ms per evaluation, "
                  f"{row['ratio_to_f']:6.2f} x f")
    if args.json:
        peers.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
