"""Test error and NFE / iterations of odenet_mnist("odenet") and deq_mnist() under float32,
mixed_bfloat16 and mixed_float16, with the same budget (README, "Mixed precision").

Not an asv benchmark (nothing here is timed by asv); run it as a script:

    python benchmarks/mixed_precision_mnist.py --train-size 2000 --test-size 1000 \\
        --model odenet --dtype float32   # one run per process; --help for the rest

Each run: seed 0, the same 2,000 training images (a seeded subset of MNIST's
60,000), Adam 1e-3, batch 32 (63 steps), one epoch, then the error on the first 1,000 test
images. Under mixed_float16 Keras wraps Adam in a LossScaleOptimizer. Printed
as one JSON line: the test error, the mean per training step of the solver
statistics (``nfe_forward``/``nfe_backward`` or ``iterations_forward``/
``iterations_backward``), steps skipped by the loss scale (non-finite
gradients), the forward statistics of the last test batch, and the seconds.
"""

import argparse
import json
import os
import sys
import time


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["odenet", "deq"], required=True)
    parser.add_argument("--dtype", choices=["float32", "mixed_bfloat16", "mixed_float16"],
                        required=True)
    parser.add_argument("--gradient", choices=["adjoint", "normalized", "unnormalized"],
                        default="adjoint",
                        help="odenet: the name 'adjoint' (the default; normalized under "
                             "mixed_float16) or an explicit Adjoint(normalize=True / False)")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", default=os.environ.get("KERAS_IMPLICIT_DATA"))
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import numpy as np

    import keras_implicit as ki
    from keras_implicit.experiments.table1 import load_split

    keras.mixed_precision.set_global_policy(args.dtype)
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_split(args.data, args.train_size,
                                                      args.test_size, 0)
    if args.model == "odenet":
        gradient = {"adjoint": None, "normalized": ki.ops.Adjoint(normalize=True),
                    "unnormalized": ki.ops.Adjoint(normalize=False)}[args.gradient]
        model = ki.applications.odenet_mnist("odenet", gradient=gradient)
        layer_name = "neural_ode"
        names = ("nfe_forward", "nfe_backward")
    else:
        model, layer_name = ki.applications.deq_mnist(), "deq"
        names = ("iterations_forward", "iterations_backward")
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    layer = model.get_layer(layer_name)
    per_step = {name: [] for name in names}
    scales = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            stats = layer.solver_stats()
            for name in names:
                per_step[name].append(int(np.asarray(stats[name])))
            if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
                scales.append(float(model.optimizer.dynamic_scale))

    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
              callbacks=[Record()])
    fit_seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test, y_test, batch_size=250, verbose=0)
    # A halved scale is a skipped step (its gradients were not finite).
    skipped = sum(1 for a, b in zip([model.optimizer.initial_scale] + scales, scales)
                  if b < a) if scales else 0
    row = {
        "model": args.model, "dtype": args.dtype, "gradient": args.gradient,
        "train_images": len(x_train),
        "test_images": len(x_test), "epochs": args.epochs,
        "test_error_pct": round(100 * (1 - float(accuracy)), 2),
        **{f"{name}_mean": round(float(np.mean(v)), 1) for name, v in per_step.items()},
        "test_forward": int(np.asarray(layer.solver_stats()[names[0]])),
        "skipped_steps": skipped, "final_loss_scale": scales[-1] if scales else None,
        "fit_seconds": round(fit_seconds, 1),
    }
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
