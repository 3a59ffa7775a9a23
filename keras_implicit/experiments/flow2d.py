"""``keras-implicit flow``: train an FFJORD ``ContinuousFlow`` on a 2-D toy density.

Trains with ``fit`` (progress bar), then evaluates the test negative
log-likelihood with the exact trace, writes ``DIR/flow2d.png`` (data, learned
density, samples), ``DIR/metrics.json`` and ``DIR/flow.keras``, and prints
the test NLL. Example::

    keras-implicit flow --dataset pinwheel --steps 2000 --out runs/pinwheel
"""

import argparse
import json
import pathlib
import time

from keras_implicit import files
from keras_implicit.experiments import arguments

# Names of keras_implicit.datasets.toy2d, for argparse (a test checks that they match).
DATASETS = ("moons", "8gaussians", "pinwheel", "checkerboard", "rings", "2spirals", "circles")


RESULT_NAMES = ("flow2d.png", "metrics.json", "flow.keras")
# toy2d draws at most this many training points (steps * batch size, capped).
MAX_TRAIN_POINTS = 200_000


def _units(text):
    try:
        units = tuple(int(u) for u in text.split(","))
    except ValueError:
        units = ()
    if not units or min(units) < 1:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated ints >= 1, e.g. 64,64,64. Received: {text!r}")
    return units


def add_arguments(parser):
    parser.add_argument("--dataset", default="pinwheel", choices=DATASETS)
    parser.add_argument("--steps", type=arguments.positive_int, default=2000,
                        help="training steps (batches)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace earlier results of flow in --out made with other settings")
    parser.add_argument("--batch-size", type=arguments.int_in_range(1, MAX_TRAIN_POINTS),
                        default=512)
    parser.add_argument("--seed", type=arguments.seed, default=0)
    parser.add_argument("--trace", default="hutchinson", choices=("hutchinson", "exact"),
                        help="trace estimator for training (evaluation always uses 'exact')")
    parser.add_argument("--noise", default="rademacher", choices=("rademacher", "gaussian"))
    parser.add_argument("--solver", default="dopri5")
    parser.add_argument("--rtol", type=arguments.positive_float, default=1e-5)
    parser.add_argument("--atol", type=arguments.positive_float, default=1e-5)
    parser.add_argument("--num-steps", type=arguments.positive_int, default=None,
                        help="fixed-grid solvers only")
    parser.add_argument("--gradient", default="adjoint", choices=("adjoint", "backprop"))
    parser.add_argument("--hidden", type=_units, default=(64, 64, 64),
                        help="hidden units of the dynamics MLP (default 64,64,64)")
    parser.add_argument("--num-blocks", type=arguments.int_in_range(1, 100), default=1)
    parser.add_argument("--learning-rate", type=arguments.positive_float, default=1e-3)
    parser.add_argument("--kinetic-weight", type=arguments.nonnegative_float, default=0.0)
    parser.add_argument("--jacobian-weight", type=arguments.nonnegative_float, default=0.0)
    parser.add_argument("--test-size", type=arguments.int_in_range(1, 10_000_000), default=5000)
    parser.add_argument("--grid", type=arguments.int_in_range(2, 2000), default=100,
                        help="density plot resolution")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                        help="Keras fit verbosity (1: progress bar)")


def _flow(args):
    import keras_implicit as ki

    return ki.models.ContinuousFlow(
        num_blocks=args.num_blocks, hidden_units=args.hidden, solver=args.solver,
        rtol=args.rtol, atol=args.atol, num_steps=args.num_steps, trace=args.trace,
        noise=args.noise, gradient=args.gradient, kinetic_energy_weight=args.kinetic_weight,
        jacobian_frobenius_weight=args.jacobian_weight, seed=args.seed)


def validate(args):
    """Checks every argument and ``--out`` without creating anything.

    Raises:
        arguments.UsageError: with a one-line message.
    """
    arguments.check_solver("--solver", args.solver, args.num_steps)
    arguments.check_run(args, "flow", _flow, RESULT_NAMES)


def run(args):
    """Trains and writes the results; call ``validate`` first."""
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_implicit as ki

    out = pathlib.Path(args.out)
    args.run_directory.prepare(args.overwrite)
    keras.utils.set_random_seed(args.seed)
    train = ki.datasets.toy2d(args.dataset, min(args.steps * args.batch_size, MAX_TRAIN_POINTS),
                              args.seed)
    test = ki.datasets.toy2d(args.dataset, args.test_size, args.seed + 1)
    dataset = (tf.data.Dataset.from_tensor_slices(train).shuffle(len(train), seed=args.seed)
               .repeat().batch(args.batch_size, drop_remainder=True))

    flow = _flow(args)
    flow.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    start = time.perf_counter()
    history = flow.fit(dataset, epochs=1, steps_per_epoch=args.steps, shuffle=False,
                       verbose=args.verbose)
    train_seconds = time.perf_counter() - start

    flow.trace = "exact"
    log_prob = tf.function(flow.log_prob, autograph=False)
    test_log_prob = np.concatenate([log_prob(tf.constant(test[i:i + 2048])).numpy()
                                    for i in range(0, len(test), 2048)])
    test_nll = float(-test_log_prob.mean())
    samples = tf.function(lambda: flow.sample(len(test), seed=args.seed), autograph=False)()

    _plot(out / "flow2d.png", args.dataset, test, samples.numpy(), log_prob, args.grid)
    flow.save(out / "flow.keras")  # atomic (ContinuousFlow.save goes through files.py)
    metrics = {
        "dataset": args.dataset, "steps": args.steps, "batch_size": args.batch_size,
        "trace": args.trace, "solver": args.solver, "rtol": args.rtol, "atol": args.atol,
        "test_nll": test_nll, "test_bits_per_dim": test_nll / (2 * np.log(2.0)),
        "final_train_loss": float(history.history["loss"][-1]),
        "nfe_forward": float(history.history["nfe_forward"][-1]),
        "nfe_backward": float(history.history["nfe_backward"][-1]),
        "train_seconds": train_seconds,
    }
    with files.atomic_write(out / "metrics.json") as handle:
        handle.write(json.dumps(metrics, indent=2) + "\n")
    print(f"test NLL on {args.dataset}: {test_nll:.4f} nats "
          f"({metrics['test_bits_per_dim']:.4f} bits/dim); wrote {out}")
    return 0


def _plot(path, name, data, samples, log_prob, resolution):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf

    low, high = np.percentile(data, [0.5, 99.5], axis=0)
    pad = 0.15 * (high - low)
    low, high = (low - pad).min(), (high + pad).max()  # a square window
    axis = np.linspace(low, high, resolution, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    density = np.exp(np.concatenate([log_prob(tf.constant(grid[i:i + 4096])).numpy()
                                     for i in range(0, len(grid), 4096)]))
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.3), layout="constrained")
    panels = [("data", data), ("learned density", None), ("samples", samples)]
    for ax, (title, points) in zip(axes, panels):
        if points is None:
            ax.imshow(density.reshape(resolution, resolution), origin="lower",
                      extent=(low, high, low, high), cmap="magma")
        else:
            ax.hist2d(points[:, 0], points[:, 1], bins=resolution,
                      range=[[low, high], [low, high]], cmap="magma")
        ax.set_title(f"{name}: {title}")
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    with files.atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    plt.close(figure)
