"""One worker of a test cluster: trains cases of ``training_cases`` with ``ki.distribute.fit``.

Run by ``worker_cluster`` with ``TF_CONFIG`` set, never by pytest
(it does not import the tests' conftest: one CPU device per worker).

    python multi_worker_main.py --out DIR --cases a,b [--epochs N]
        [--checkpoint-dir DIR] [--kill-at EPOCH,STEP] [--timeout-seconds S]

For each case it writes ``DIR/<case>.<task index>.npz`` (the final weights)
and ``DIR/<case>.<task index>.json`` (the trained epochs and their logs).
``--kill-at`` makes task 1 kill itself with SIGKILL after that step of that
epoch (an abrupt loss of a machine).
"""

import argparse
import json
import os
import pathlib
import signal

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_implicit as ki  # noqa: E402
import training_cases  # noqa: E402


class KillAt(keras.callbacks.Callback):
    """SIGKILLs this process after train step ``step`` of epoch ``epoch`` (no cleanup)."""

    def __init__(self, epoch, step):
        super().__init__()
        self.target = (epoch, step)
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.target:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", required=True)
    parser.add_argument("--epochs", type=int, default=training_cases.EPOCHS)
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--kill-at")
    parser.add_argument("--timeout-seconds", type=float, default=120.0)
    args = parser.parse_args()

    strategy = ki.distribute.multi_worker_strategy(timeout_seconds=args.timeout_seconds)
    task = strategy.cluster_resolver.task_id
    out = pathlib.Path(args.out)
    for name in args.cases.split(","):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model, dataset = training_cases.build(name)
        callbacks = []
        if args.kill_at and task == 1:
            callbacks.append(KillAt(*(int(v) for v in args.kill_at.split(","))))
        history = ki.distribute.fit(model, dataset, epochs=args.epochs, callbacks=callbacks,
                                    checkpoint_dir=args.checkpoint_dir, verbose=0)
        np.savez(out / f"{name}.{task}.npz", *training_cases.trainable_weights(model))
        (out / f"{name}.{task}.json").write_text(
            json.dumps({"epochs": history.epoch, "history": history.history}))


if __name__ == "__main__":
    main()
