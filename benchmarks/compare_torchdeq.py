"""Time per training step of the same DEQ cells in keras_implicit and in torchdeq.

    python benchmarks/compare_torchdeq.py --torch-python /tmp/torchvenv/bin/python

Two cells, each with the same weights and inputs on both sides:

- ``dense``: ``tanh(z W + x U + b)``, 256 features, batch 64, ``W`` symmetric
  with eigenvalues over [-0.5, 0.95] (the cell of ``bench_deq.py``).
- ``conv``: the ``DEQConvCell`` of ``ki.applications.deq_mnist`` (two 3x3
  convolutions with GroupNorm, residual), state 14x14x32, hidden 64 channels,
  batch 32 (channels last in Keras, channels first in torch).

Both use Anderson acceleration forward and backward (memory 5), relative
residual ``tol`` 1e-4 forward and backward, ``max_iter`` 50, the implicit
(IFT) gradient, loss = mean of squares of ``z*`` and one SGD update. The
TensorFlow side traces a ``tf.function`` and warms it up; torch runs eagerly
(its usual mode). Both sides use ``--threads`` CPU threads (default 1: on a
shared or loaded machine, torch's OpenMP threads spin-wait and a 2-thread
torch step can be 30x slower than a 1-thread one). The script writes weights
and inputs to a temporary .npz, runs the torch side in the given interpreter
(a scratch venv with torch and torchdeq; neither is a dependency of
keras_implicit) and prints one table: median seconds per step, forward and
backward iterations, a checksum of ``z*`` (the two sides must agree) and the
ratio. Not run by asv or pytest; it imports torch only in the
``--torch-side`` subprocess.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

TOL = 1e-4
MAX_ITER = 50
MEMORY = 5
CASES = {
    "dense": {"batch": 64, "dim": 256},
    "conv": {"batch": 32, "size": 14, "channels": 32, "hidden": 64, "groups": 8},
}


def _median_time(step, repeats):
    # Also runs in the torch interpreter, which has no keras_implicit to import.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tf_layer(case, jit_cell=False):
    import keras
    import numpy as np

    import keras_implicit as ki
    from keras_implicit.layers.deq_cells import DEQConvCell, DEQDenseCell

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_deq

    keras.utils.set_random_seed(0)
    spec = CASES[case]
    solver = {"name": "anderson", "memory": MEMORY}
    rng = np.random.RandomState(0)
    if case == "dense":
        cell = DEQDenseCell()
        shape = (spec["batch"], spec["dim"])
    else:
        cell = DEQConvCell(spec["hidden"], groups=spec["groups"])
        shape = (spec["batch"], spec["size"], spec["size"], spec["channels"])
    layer = ki.layers.DEQ(cell, solver=solver, tol=TOL, max_iter=MAX_ITER, on_failure="ignore",
                          jit_cell=jit_cell)
    layer.build((None,) + shape[1:])
    if case == "dense":
        cell.recurrent_kernel.assign(bench_deq.recurrent_kernel(spec["dim"]))
    x = rng.randn(*shape).astype("float32")
    return layer, x


def run_tensorflow(case, repeats, npz_path, jit_cell=False):
    import numpy as np

    layer, x = _tf_layer(case, jit_cell)
    import bench_deq  # importable once _tf_layer has put benchmarks/ on sys.path

    weights = {w.path.replace("/", "__"): w.numpy() for w in layer.cell.weights}
    np.savez(npz_path, x=x, **weights)
    z = layer(x).numpy()
    step = bench_deq.make_train_step(layer)
    step(x)
    seconds = _median_time(lambda: step(x).numpy(), repeats)
    stats = {k: np.asarray(v).item() for k, v in layer.solver_stats().items()}
    return {"impl": "ki jit_cell" if jit_cell else "keras_implicit", "case": case,
            "seconds": seconds, "iterations_forward": stats["iterations_forward"],
            "iterations_backward": stats["iterations_backward"],
            "output_checksum": float(np.abs(z).sum())}


def run_torch(case, repeats, npz_path, threads):
    """The torch side (runs in the torch interpreter)."""
    import numpy as np
    import torch
    from torchdeq import get_deq

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = dict(np.load(npz_path))
    x = torch.tensor(data.pop("x"))
    spec = CASES[case]

    def find(suffix):
        [key] = [k for k in data if k.endswith(suffix)]
        return torch.nn.Parameter(torch.tensor(data[key]))

    if case == "dense":
        params = {"w": find("recurrent_kernel"), "u": find("__kernel"), "b": find("bias")}

        def cell(z, x):
            return torch.tanh(z @ params["w"] + x @ params["u"] + params["b"])

        z0 = torch.zeros(x.shape[0], spec["dim"])
    else:
        x = x.permute(0, 3, 1, 2).contiguous()
        params = {
            "conv1": find("conv1__kernel"), "conv2": find("conv2__kernel"),
            **{f"{n}_{p}": find(f"{n}__{p}") for n in ("norm1", "norm2", "norm3")
               for p in ("gamma", "beta")},
        }
        # Keras GroupNormalization's default epsilon.
        eps = 1e-3

        def conv(z, kernel):
            return torch.nn.functional.conv2d(z, kernel.permute(3, 2, 0, 1), padding="same")

        def norm(z, name):
            return torch.nn.functional.group_norm(z, spec["groups"], params[f"{name}_gamma"],
                                                  params[f"{name}_beta"], eps)

        def cell(z, x):
            y = norm(torch.relu(conv(z, params["conv1"])), "norm1")
            return norm(torch.relu(z + norm(x + conv(y, params["conv2"]), "norm2")), "norm3")

        z0 = torch.zeros_like(x)
    deq = get_deq(core="indexing", ift=True, f_solver="anderson", b_solver="anderson",
                  f_max_iter=MAX_ITER, b_max_iter=MAX_ITER, f_tol=TOL, b_tol=TOL,
                  f_stop_mode="rel", b_stop_mode="rel")
    deq.train()
    optimizer = torch.optim.SGD(list(params.values()), lr=0.01)
    info_box = {}

    def record_backward(info):
        info_box["backward_nstep"] = int(info["nstep"].float().mean().item())

    def step():
        optimizer.zero_grad()
        z_out, info = deq(lambda z: cell(z, x), z0, solver_kwargs={"m": MEMORY},
                          backward_writer=record_backward)
        loss = torch.mean(z_out[-1] ** 2)
        loss.backward()
        optimizer.step()
        info_box.update(info)

    with torch.no_grad():
        deq.eval()
        z_eval, _ = deq(lambda z: cell(z, x), z0, solver_kwargs={"m": MEMORY})
        deq.train()
        checksum = float(z_eval[-1].abs().sum())
        if case == "conv":
            checksum = float(z_eval[-1].permute(0, 2, 3, 1).abs().sum())
    step()
    seconds = _median_time(step, repeats)
    return {"impl": "torchdeq", "case": case, "seconds": seconds,
            "iterations_forward": int(info_box["nstep"].float().mean().item()),
            "iterations_backward": info_box.get("backward_nstep"), "output_checksum": checksum,
            "threads": torch.get_num_threads()}


def _check_interpreter(flag, python, modules):
    """Exits with one line unless ``python`` runs and imports ``modules`` (checked before
    the TensorFlow side spends minutes)."""
    try:
        result = subprocess.run([python, "-c", f"import {modules}"], capture_output=True,
                                text=True)
    except OSError as error:
        sys.exit(f"{flag}={python!r}: cannot run it ({error.strerror})")
    if result.returncode:
        last = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        sys.exit(f"{flag}={python!r}: cannot import {modules} ({last})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", default="/tmp/torchvenv/bin/python",
                        help="interpreter with torch and torchdeq")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cases", default="dense,conv")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of each framework (TensorFlow intra- and inter-op)")
    parser.add_argument("--torch-side", nargs=2, metavar=("CASE", "NPZ"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_side:
        print(json.dumps(run_torch(args.torch_side[0], args.repeats, args.torch_side[1],
                                   args.threads)))
        return 0
    _check_interpreter("--torch-python", args.torch_python, "torch, torchdeq")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            npz_path = os.path.join(tmp, f"{case}.npz")
            rows.append(run_tensorflow(case, args.repeats, npz_path, jit_cell=True))
            rows.append(run_tensorflow(case, args.repeats, npz_path))
            out = subprocess.run(
                [args.torch_python, os.path.abspath(__file__), "--repeats", str(args.repeats),
                 "--threads", str(args.threads), "--torch-side", case, npz_path],
                capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"The torchdeq side failed ({args.torch_python}):\n{out.stderr[-3000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'case':6} {'impl':15} {'s/step':>9} {'fwd it':>7} {'bwd it':>7} "
          f"{'|z*| sum':>12} {'vs torchdeq':>12}")
    torch_seconds = {r["case"]: r["seconds"] for r in rows if r["impl"] == "torchdeq"}
    for row in rows:
        ratio = row["seconds"] / torch_seconds[row["case"]]
        backward = "-" if row["iterations_backward"] is None else row["iterations_backward"]
        print(f"{row['case']:6} {row['impl']:15} {row['seconds']:9.4f} "
              f"{row['iterations_forward']:7} {backward:>7} {row['output_checksum']:12.4f} "
              f"{ratio:11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
