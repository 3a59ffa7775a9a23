"""``keras-implicit table1``: Table 1 of the Neural ODE paper (Chen et al. 2018) on MNIST.

Trains the paper's four classifiers (``ki.applications.odenet_mnist``: MLP,
ResNet, RK-Net, ODE-Net) with ``fit``, evaluates each on the test set (all
10,000 images by default) and measures the training steps of ``fit`` (all
but the first, which traces): their peak memory above what was held before
each (GPU allocator with a GPU; on CPU TensorFlow's CPU allocator, see
``experiments/measure.py``), their median time, and for the ODE models the
forward and backward (adjoint) NFE. Prints the
table and writes ``table1.csv``, ``table1.md`` (next to the paper's numbers)
and ``table1.png`` to ``--out``.

Training follows the paper's code (batch 128, no augmentation here) but with
Adam, so that the short budgets a CPU allows already give low errors.
"""

import argparse
import os
import sys
import time

MODELS = ("mlp", "resnet", "rknet", "odenet")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 1. Received: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1. Received: {value}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0. Received: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0. Received: {value}")
    return value


def _model_list(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated subset of {','.join(MODELS)}. Received: {text!r}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"lists a model twice. Received: {text!r}")
    return names


def add_arguments(parser):
    parser.add_argument("--models", type=_model_list, default=list(MODELS),
                        help="comma-separated subset of mlp,resnet,rknet,odenet (default: all)")
    parser.add_argument("--epochs", type=_positive_int, default=1, help="epochs (default 1)")
    parser.add_argument("--train-size", type=_positive_int, default=None,
                        help="training images, a seeded random subset (default: all 60000)")
    parser.add_argument("--test-size", type=_positive_int, default=None,
                        help="test images (default: all 10000)")
    parser.add_argument("--batch-size", type=_positive_int, default=128,
                        help="training batch size (default 128, as the paper's code)")
    parser.add_argument("--eval-batch-size", type=_positive_int, default=500,
                        help="evaluation batch size (default 500)")
    parser.add_argument("--learning-rate", type=_positive_float, default=1e-3,
                        help="Adam learning rate (default 1e-3)")
    parser.add_argument("--rknet-steps", type=_positive_int, default=None,
                        help="RK4 steps of the RK-Net (default 4)")
    parser.add_argument("--jit-dynamics", action="store_true",
                        help="compile the RK-Net's and ODE-Net's dynamics with XLA")
    parser.add_argument("--data", default=None,
                        help="MNIST directory (IDX files or mnist.npz) or .npz file; default "
                             "$KERAS_IMPLICIT_DATA, else keras.datasets.mnist (download)")
    parser.add_argument("--out", default="table1_results", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                        help="fit/evaluate verbosity: 1 progress bar (default), 2 one line, 0 none")


def load_split(data, train_size, test_size, seed):
    """MNIST as float32 images in [0, 1] of shape (n, 28, 28, 1) and int labels."""
    import numpy as np

    from keras_implicit.datasets import mnist

    (x_train, y_train), (x_test, y_test) = mnist.load_data(data)
    for flag, size, available in (("--train-size", train_size, len(x_train)),
                                  ("--test-size", test_size, len(x_test))):
        if size is not None and size > available:
            raise ValueError(f"`{flag}` must be <= {available}, the images available. "
                             f"Received: {flag}={size}")
    if train_size is not None:
        keep = np.random.default_rng(seed).permutation(len(x_train))[:train_size]
        x_train, y_train = x_train[keep], y_train[keep]
    if test_size is not None:
        x_test, y_test = x_test[:test_size], y_test[:test_size]

    def images(x):
        return (x.astype("float32") / 255.0)[..., None]

    return (images(x_train), y_train.astype("int32")), (images(x_test), y_test.astype("int32"))


def run_model(kind, data, args, meter):
    """Trains, evaluates and measures one model; returns its row of the table."""
    import keras
    import numpy as np

    from keras_implicit import applications, callbacks
    from keras_implicit.experiments.step_callback import TrainingStepMeter

    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(args.seed)
    options = {"num_steps": args.rknet_steps} if kind == "rknet" and args.rknet_steps else {}
    if kind in ("rknet", "odenet") and args.jit_dynamics:
        options["jit_dynamics"] = True
    model = applications.odenet_mnist(kind, **options)
    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    print(f"\n== {kind}: {params:,} parameters ({params / 1e6:.3f}M) ==", flush=True)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    step_meter = TrainingStepMeter(meter, max(len(x_train) // args.batch_size, 1))
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
              shuffle=True, verbose=args.verbose,
              callbacks=[step_meter, callbacks.SolverStats()])
    fit_seconds = time.perf_counter() - start
    # The last training step's statistics; evaluation overwrites them.
    ode_layers = [layer for layer in model._flatten_layers(include_self=False)
                  if callable(getattr(layer, "solver_stats", None))]
    train_stats = [{name: int(np.asarray(value)) for name, value in layer.solver_stats().items()}
                   for layer in ode_layers]
    _, accuracy = model.evaluate(x_test, y_test, batch_size=args.eval_batch_size,
                                 verbose=args.verbose)
    peak, seconds = step_meter.max_peak_bytes(), step_meter.median_seconds()
    row = {
        "model": kind,
        "test_error_pct": round(100.0 * (1.0 - float(accuracy)), 3),
        "test_images": len(x_test),
        "params": params,
        "peak_memory_mb": round(peak / 2**20, 2),
        "time_per_step_ms": round(1000.0 * seconds, 1),
        "measured_steps": len(step_meter.seconds),
        "nfe_forward": "",
        "nfe_backward": "",
        "gradient": "backprop",
        "fit_seconds": round(fit_seconds, 1),
    }
    for layer, stats in zip(ode_layers, train_stats):
        row["nfe_forward"] = stats["nfe_forward"]
        gradient = layer.get_config()["gradient"]
        row["gradient"] = gradient if isinstance(gradient, str) else gradient["name"]
        # Under backprop no ODE is solved backwards: the reverse pass differentiates
        # each forward evaluation once, which the table shows as "-".
        row["nfe_backward"] = stats["nfe_backward"] if row["gradient"] == "adjoint" else ""
    return row


def run(args):
    from keras_implicit.experiments import measure

    # Before the TensorFlow runtime starts: CPU allocator statistics for peak memory.
    measure.enable_cpu_allocator_stats()
    import tensorflow as tf

    from keras_implicit.experiments import table1_report

    wall_start = time.perf_counter()
    try:
        data = load_split(args.data, args.train_size, args.test_size, args.seed)
    except (ValueError, FileNotFoundError) as error:
        print(f"keras-implicit table1: error: {error}", file=sys.stderr, flush=True)
        return 2
    (x_train, _), (x_test, _) = data
    # Measured steps: full batches of every epoch but the very first (it traces).
    if args.epochs * max(len(x_train) // args.batch_size, 1) < 2:
        print(f"keras-implicit table1: error: measuring a training step needs two full "
              f"training batches (the first one traces): raise `--train-size` or `--epochs`, "
              f"or lower `--batch-size`. Received: --train-size={len(x_train)}, "
              f"--epochs={args.epochs}, --batch-size={args.batch_size}", file=sys.stderr,
              flush=True)
        return 2
    meter = measure.StepMemoryMeter()
    print(f"MNIST: {len(x_train)} training and {len(x_test)} test images; models: "
          f"{', '.join(args.models)}; peak memory measured as {meter.description}.", flush=True)
    rows = [run_model(kind, data, args, meter) for kind in args.models]
    settings = {
        "train_size": len(x_train),
        "test_size": len(x_test),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "jit_dynamics": bool(args.jit_dynamics),
        "memory_method": meter.method,
        "memory_description": meter.description,
        "device": "GPU" if meter.method == "gpu" else f"CPU ({os.cpu_count()} cores)",
        "tensorflow": tf.__version__,
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
    }
    os.makedirs(args.out, exist_ok=True)
    paths = table1_report.write_all(rows, settings, args.out)
    print("\n" + table1_report.markdown(rows, settings))
    print("Wrote " + ", ".join(paths))
    return 0
