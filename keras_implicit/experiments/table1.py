"""``keras-implicit table1``: Table 1 of the Neural ODE paper (Chen et al. 2018) on MNIST.

Trains the paper's four classifiers (``ki.applications.odenet_mnist``: MLP,
ResNet, RK-Net, ODE-Net) with ``fit``, one epoch at a time, by the recipe of
``table1_recipe`` (``--recipe quick`` or ``paper``, every part overridable),
evaluates each on the test set after every epoch and measures the training
steps of ``fit`` (all but the first of each epoch, which may trace): their
peak memory above what was held before each (GPU allocator with a GPU; on CPU
TensorFlow's CPU allocator, see ``experiments/measure.py``), their median
time, and for the ODE models the forward and backward (adjoint) NFE. The
block-memory column measures the residual/ODE part alone at 1x and 4x its
depth, steps or integration interval (``experiments/block_memory.py``).

``--out`` holds ``run.json`` (the settings), per-model checkpoints
(``table1_training``) and the table (``table1.csv``, ``table1.md``,
``table1.png``), rewritten after every epoch. Rerunning the same command
resumes: finished models are not retrained, others continue from their last
epoch, and a larger ``--epochs`` trains on. A rerun with other settings
(anything but ``--epochs``, ``--models``, ``--verbose``, ``--data``,
``--eval-batch-size``, ``--block-memory``) is refused unless ``--overwrite``.
"""

import argparse
import os
import sys
import time

from keras_implicit.experiments import arguments

MODELS = ("mlp", "resnet", "rknet", "odenet")
RESULT_NAMES = ("table1.csv", "table1.md", "table1.png", "checkpoints")
DEFAULT_RKNET_STEPS = 4


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
    parser.add_argument("--recipe", choices=("quick", "paper"), default="quick",
                        help="training recipe: 'quick' (Adam, 1 epoch; default) or 'paper' "
                             "(the paper's code: SGD, lr steps, augmentation, 160 epochs)")
    parser.add_argument("--models", type=_model_list, default=list(MODELS),
                        help="comma-separated subset of mlp,resnet,rknet,odenet (default: all)")
    parser.add_argument("--epochs", type=arguments.positive_int, default=None,
                        help="total epochs (default: the recipe's, quick 1, paper 160); a "
                             "rerun with more continues from the last checkpoint")
    parser.add_argument("--train-size", type=arguments.positive_int, default=None,
                        help="training images, a seeded random subset (default: all 60000)")
    parser.add_argument("--test-size", type=arguments.positive_int, default=None,
                        help="test images (default: all 10000)")
    parser.add_argument("--batch-size", type=arguments.positive_int, default=128,
                        help="training batch size (default 128, as the paper's code)")
    parser.add_argument("--eval-batch-size", type=arguments.positive_int, default=500,
                        help="evaluation batch size (default 500)")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default=None,
                        help="default: the recipe's (quick adam, paper sgd)")
    parser.add_argument("--learning-rate", type=arguments.positive_float, default=None,
                        help="default: adam 1e-3; sgd 0.1 * batch-size / 128")
    parser.add_argument("--momentum", type=arguments.fraction, default=None,
                        help="SGD momentum (default 0.9)")
    parser.add_argument("--lr-decay-epochs", type=arguments.int_list, default=None,
                        help="epochs at which the learning rate is divided by 10, e.g. "
                             "60,100,140 (the paper recipe's), or 'none' (the quick recipe's)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="random 28x28 crops of 4-pixel-padded images (default: the "
                             "recipe's, quick off, paper on)")
    parser.add_argument("--rknet-steps", type=arguments.positive_int, default=None,
                        help=f"RK4 steps of the RK-Net (default {DEFAULT_RKNET_STEPS})")
    parser.add_argument("--jit-dynamics", action=argparse.BooleanOptionalAction, default=None,
                        help="compile the RK-Net's and ODE-Net's dynamics with XLA "
                             "(jit_dynamics=True) or not (--no-jit-dynamics); default the "
                             "library's 'auto', which compiles these convolutional dynamics "
                             "alone too")
    parser.add_argument("--block-memory", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the block-memory column (default on; a subprocess "
                             "per model, about a minute in all)")
    parser.add_argument("--data", default=None,
                        help="MNIST directory (IDX files or mnist.npz) or .npz file; default "
                             "$KERAS_IMPLICIT_DATA, else keras.datasets.mnist (download)")
    parser.add_argument("--out", default="table1_results",
                        help="output directory: results, run.json and checkpoints")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard earlier results and checkpoints of table1 in --out and "
                             "start over (needed when their settings differ)")
    parser.add_argument("--seed", type=arguments.seed, default=0,
                        help="random seed (default 0)")
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


def validate(args):
    """Checks every argument, the data and ``--out`` without creating anything.

    Sets ``args.settings`` (what ``run.json`` records), ``args.epochs``,
    ``args.split`` (the data) and ``args.run_directory``.

    Raises:
        arguments.UsageError: with a one-line message.
    """
    from keras_implicit.experiments import measure, run_directory, table1_recipe

    # Before the TensorFlow runtime starts: CPU allocator statistics for peak memory.
    measure.enable_cpu_allocator_stats()
    try:
        training, args.epochs = table1_recipe.resolve(
            args.recipe, optimizer=args.optimizer, learning_rate=args.learning_rate,
            momentum=args.momentum, lr_decay_epochs=args.lr_decay_epochs, augment=args.augment,
            epochs=args.epochs, batch_size=args.batch_size)
    except ValueError as error:
        raise arguments.UsageError(str(error)) from None
    decay = training["lr_decay_epochs"]
    if len(set(decay)) != len(decay):
        raise arguments.UsageError(f"--lr-decay-epochs lists an epoch twice. Received: "
                                   f"--lr-decay-epochs={','.join(map(str, decay))}")
    arguments.check_output_directory(args.out)
    try:
        args.split = load_split(args.data, args.train_size, args.test_size, args.seed)
    except (ValueError, OSError) as error:
        raise arguments.UsageError(" ".join(str(error).split())) from None
    except Exception as error:  # noqa: BLE001 -- keras' download raises a bare Exception
        source = f"--data={args.data!r}"
        if args.data is None:
            source += f", $KERAS_IMPLICIT_DATA={os.environ.get('KERAS_IMPLICIT_DATA')!r}"
        raise arguments.UsageError(
            f"could not load MNIST ({type(error).__name__}: {' '.join(str(error).split())}); "
            f"pass --data or set $KERAS_IMPLICIT_DATA. Received: {source}") from None
    (x_train, _), (x_test, _) = args.split
    # Measured steps: full batches of every epoch but its first (it may trace).
    if len(x_train) // args.batch_size < 2:
        raise arguments.UsageError(
            f"measuring a training step needs two full training batches per epoch (the "
            f"first one traces): raise --train-size or lower --batch-size. Received: "
            f"--train-size={len(x_train)}, --batch-size={args.batch_size}")
    args.settings = {
        "recipe": args.recipe,
        "train_size": len(x_train),
        "test_size": len(x_test),
        "batch_size": args.batch_size,
        **training,
        "rknet_steps": args.rknet_steps or DEFAULT_RKNET_STEPS,
        # "auto" (the library's default), True or False: NeuralODE's jit_dynamics.
        "jit_dynamics": "auto" if args.jit_dynamics is None else args.jit_dynamics,
        "seed": args.seed,
    }
    args.run_directory = run_directory.RunDirectory(args.out, "table1", args.settings,
                                                    RESULT_NAMES)
    args.run_directory.check(args.overwrite)


def _report_settings(settings, meter, wall_start):
    import tensorflow as tf

    from keras_implicit.experiments import table1_recipe

    return {
        **settings,
        "training": table1_recipe.describe(settings),
        "memory_method": meter.method,
        "memory_description": meter.description,
        "device": "GPU" if meter.method == "gpu" else f"CPU ({os.cpu_count()} cores)",
        "tensorflow": tf.__version__,
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
    }


def write_table(out, settings, meter, wall_start):
    """Rewrites the table from every model's progress in ``out``; returns the Markdown."""
    from keras_implicit.experiments import table1_report, table1_training

    rows = []
    for kind in MODELS:
        progress = table1_training.read_progress(out, kind)
        row = progress and table1_training.table_row(progress, settings["test_size"])
        if row:
            rows.append(row)
    report_settings = _report_settings(settings, meter, wall_start)
    table1_report.write_all(rows, report_settings, out)
    return table1_report.markdown(rows, report_settings)


def run(args):
    """Trains what is missing in ``args.out`` and writes the table; call ``validate`` first."""
    from keras_implicit.experiments import block_memory, measure, table1_training

    wall_start = time.perf_counter()
    args.run_directory.prepare(args.overwrite)
    (x_train, y_train), (x_test, y_test) = args.split
    settings = args.settings
    meter = measure.StepMemoryMeter()
    print(f"MNIST: {len(x_train)} training and {len(x_test)} test images; models: "
          f"{', '.join(args.models)}; {args.epochs} epoch(s); peak memory measured as "
          f"{meter.description}. Results and checkpoints in {args.out}.", flush=True)
    for kind in args.models:
        training = table1_training.ModelTraining(kind, settings, args.out, meter)
        params = training.progress["params"]
        done = training.epochs_done
        state = f"resuming after epoch {done}" if done else "starting"
        print(f"\n== {kind}: {params:,} parameters ({params / 1e6:.3f}M); {state} ==",
              flush=True)
        if args.block_memory and kind != "mlp" and training.progress["block_memory"] is None:
            print(f"Measuring the block memory of {kind} in a subprocess...", flush=True)
            training.set_block_memory(block_memory.measure_in_subprocess(kind, settings))
        if done >= args.epochs:
            print(f"{kind}: {done} epoch(s) done already (--epochs {args.epochs}); not "
                  f"training.", flush=True)
        while training.epochs_done < args.epochs:
            print(f"{kind}: epoch {training.epochs_done + 1}/{args.epochs}", flush=True)
            record = training.train_epoch(x_train, y_train, x_test, y_test, args.verbose,
                                          args.eval_batch_size)
            print(f"{kind}: epoch {record['epoch']}: test error {record['test_error_pct']:.2f}%"
                  f", lr {record['learning_rate']:g}, {record['fit_seconds']:.0f} s", flush=True)
            write_table(args.out, settings, meter, wall_start)
        write_table(args.out, settings, meter, wall_start)
        del training
    markdown = write_table(args.out, settings, meter, wall_start)
    print("\n" + markdown)
    print("Wrote " + ", ".join(os.path.join(args.out, name) for name in RESULT_NAMES[:3]))
    sys.stdout.flush()
    return 0
