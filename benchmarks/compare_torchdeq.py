"""Time per training step of the same DEQ cells in keras_implicit and in torchdeq.

    python benchmarks/compare_torchdeq.py --torch-python /path/to/venv/bin/python [--json out.json]

Two cells, each with the same weights, inputs and loss on both sides:

- ``conv``: the ``DEQConvCell`` of ``ki.applications.deq_mnist`` (two 3x3
  convolutions with GroupNorm, residual), state 14x14x32, hidden 64 channels,
  with ``deq_mnist``'s solve: Anderson, relative residual ``tol`` 1e-3 forward
  and backward, ``max_iter`` 30 (channels last in Keras, channels first in torch).
- ``dense``: ``tanh(z W + x U + b)``, 256 features, ``W`` symmetric with
  eigenvalues over [-0.5, 0.95] (the cell of ``bench_deq.py``), ``tol`` 1e-4,
  ``max_iter`` 50.

Both use Anderson acceleration forward and backward (memory 5), the implicit
(IFT) gradient, a loss and one SGD update. The loss is ``sum(z* * c) / batch``
with a fixed random readout ``c`` (``--loss sum``, the default), so each
sample's gradient has a norm of order one; ``--loss mean`` uses
``mean(z* * c)``, the scale of a batch-averaged loss. (A mean of squares of
``z*`` would have almost no gradient through the conv cell's last GroupNorm,
whose output has a constant norm.) The two Anderson implementations differ in
one respect that shows in the backward iterations: torchdeq regularises the
least squares with an absolute ``1e-4 * I``, ours relative to each residual's
squared norm, and once the backward residuals are small torchdeq's
regularisation dominates and its iteration slows down (on the conv cell 24
backward iterations against our 9 at ``--loss sum``; to ``max_iter`` at
``--loss mean``). The table therefore also shows the time per evaluation of
the cell (forward and backward iterations together), which compares the cost
of an iteration apart from the iteration counts. The learning rate is 1e-5:
an update costs the same at any rate, and the weights, so the iteration
counts, stay the same over the timed steps. Batches 64 and 128 by default.

Ours runs the defaults first (``jit_cell="auto"``), then ``jit_cell=False``
(TensorFlow's graph) and ``jit_cell=True``; each traces a ``tf.function`` and
warms it up. torch runs eagerly (its usual mode) in a second process that stays
up, so that samples alternate between the two sides (each waits while the
other runs). A sample is ``--inner`` steps; the table shows the median over
``--repeats`` samples (>= 5 for the protocol) of the wall time and of the
process CPU time per step (``time.process_time``: far less sensitive to other
processes on a loaded machine), forward and backward iterations, a checksum of
``z*`` (the two sides must agree) and the ratios to torchdeq. Both sides use
``--threads`` CPU threads (default 1: on a shared or loaded machine torch's
OpenMP threads spin-wait, and a 2-thread torch step can be 30x slower than a
1-thread one). Neither torch nor torchdeq is a dependency of keras_implicit;
torch is imported only in the ``--torch-side`` process. Not run by asv or
pytest; nothing is asserted.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

MEMORY = 5
LEARNING_RATE = 1e-5
LOSSES = ("sum", "mean")
CASES = {
    "conv": {"size": 14, "channels": 32, "hidden": 64, "groups": 8, "tol": 1e-3,
             "max_iter": 30},
    "dense": {"dim": 256, "tol": 1e-4, "max_iter": 50},
}
# (label, DEQ keyword arguments): the defaults first.
VARIANTS = [("ki defaults", {}), ("ki jit_cell=False", {"jit_cell": False}),
            ("ki jit_cell=True", {"jit_cell": True})]


def _sample(step, inner):
    """``(wall, cpu)`` seconds per call of ``step`` over ``inner`` calls (also runs in the
    torch interpreter, which has no keras_implicit)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(inner):
        step()
    return (time.perf_counter() - wall) / inner, (time.process_time() - cpu) / inner


def _shapes(case, batch):
    spec = CASES[case]
    if case == "dense":
        return (batch, spec["dim"])
    return (batch, spec["size"], spec["size"], spec["channels"])


def tensorflow_side(case, batch, npz_path, loss):
    """``[(label, layer, step, checksum of z*)]`` of every variant (same weights) and the
    input; writes the weights, input and readout to ``npz_path``."""
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_implicit as ki
    from keras_implicit.layers.deq_cells import DEQConvCell, DEQDenseCell

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_deq

    spec = CASES[case]
    shape = _shapes(case, batch)
    rng = np.random.RandomState(0)
    x = rng.randn(*shape).astype("float32")
    readout = rng.randn(*shape).astype("float32")
    scale = float(batch if loss == "sum" else readout.size)
    variants, weights = [], None
    for label, kwargs in VARIANTS:
        keras.utils.set_random_seed(0)
        cell = DEQDenseCell() if case == "dense" else DEQConvCell(spec["hidden"],
                                                                  groups=spec["groups"])
        layer = ki.layers.DEQ(cell, solver={"name": "anderson", "memory": MEMORY},
                              tol=spec["tol"], max_iter=spec["max_iter"], on_failure="ignore",
                              **kwargs)
        layer.build((None,) + shape[1:])
        if case == "dense":
            cell.recurrent_kernel.assign(bench_deq.recurrent_kernel(spec["dim"]))
        if weights is None:
            weights = {w.path.replace("/", "__"): w.numpy() for w in cell.weights}
        optimizer = keras.optimizers.SGD(LEARNING_RATE)
        optimizer.build(layer.trainable_variables)

        @tf.function
        def step(x, layer=layer, optimizer=optimizer):
            with tf.GradientTape() as tape:
                value = tf.reduce_sum(layer(x, training=True) * readout) / scale
            grads = tape.gradient(value, layer.trainable_variables)
            optimizer.apply_gradients(zip(grads, layer.trainable_variables))
            return value

        checksum = float(np.abs(layer(x).numpy()).sum())  # before any update
        variants.append((label, layer, step, checksum))
    np.savez(npz_path, x=x, readout=readout, **weights)
    return variants, tf.constant(x)


def run_torch(case, batch, npz_path, threads, inner, loss):
    """The torch side (runs in the torch interpreter): one JSON line when ready, then one per
    ``sample`` line read from stdin."""
    import numpy as np
    import torch
    from torchdeq import get_deq

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = dict(np.load(npz_path))
    x = torch.tensor(data.pop("x"))
    readout = torch.tensor(data.pop("readout"))
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
        readout = readout.permute(0, 3, 1, 2).contiguous()
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
                  f_max_iter=spec["max_iter"], b_max_iter=spec["max_iter"], f_tol=spec["tol"],
                  b_tol=spec["tol"], f_stop_mode="rel", b_stop_mode="rel")
    deq.train()
    optimizer = torch.optim.SGD(list(params.values()), lr=LEARNING_RATE)
    info_box = {}

    def record_backward(info):
        info_box["backward_nstep"] = int(info["nstep"].float().mean().item())

    def step():
        optimizer.zero_grad()
        z_out, info = deq(lambda z: cell(z, x), z0, solver_kwargs={"m": MEMORY},
                          backward_writer=record_backward)
        value = torch.sum(z_out[-1] * readout) / (batch if loss == "sum" else readout.numel())
        value.backward()
        optimizer.step()
        info_box.update(info)

    with torch.no_grad():
        deq.eval()
        z_eval, _ = deq(lambda z: cell(z, x), z0, solver_kwargs={"m": MEMORY})
        deq.train()
        z_eval = z_eval[-1] if case == "dense" else z_eval[-1].permute(0, 2, 3, 1)
        checksum = float(z_eval.abs().sum())
    step()
    print(json.dumps({"checksum": checksum, "threads": torch.get_num_threads(),
                      "version": torch.__version__}), flush=True)
    for _ in sys.stdin:
        wall, cpu = _sample(step, inner)
        print(json.dumps({"wall": wall, "cpu": cpu,
                          "iterations_forward": int(info_box["nstep"].float().mean().item()),
                          "iterations_backward": info_box.get("backward_nstep")}), flush=True)


def compare(case, batch, args, tmp):
    """The rows of one case and batch: each variant of ours, then torchdeq."""
    import numpy as np
    import peers

    npz_path = os.path.join(tmp, f"{case}_{batch}.npz")
    variants, x = tensorflow_side(case, batch, npz_path, args.loss)
    first_calls = {}
    for label, _, step, _ in variants:
        start = time.perf_counter()
        step(x).numpy()
        first_calls[label] = time.perf_counter() - start
    torch_side = peers.PeerProcess(
        "torchdeq", [args.torch_python, os.path.abspath(__file__), "--threads",
                     str(args.threads), "--inner", str(args.inner), "--loss", args.loss,
                     "--torch-side", case, str(batch), npz_path],
        os.path.join(tmp, f"torch_{case}_{batch}.txt"))
    for _, _, step, _ in variants:  # warm again once all exist
        step(x).numpy()
    samples = {label: [] for label, *_ in variants + [("torchdeq",)]}
    torch_info = {}
    for _ in range(args.repeats):
        for label, _, step, _ in variants:
            samples[label].append(_sample(lambda: step(x).numpy(), args.inner))
        torch_info = torch_side.read("sample")
        samples["torchdeq"].append((torch_info["wall"], torch_info["cpu"]))
    torch_side.close()
    rows = []
    for label, layer, _, checksum in variants:
        stats = {k: np.asarray(v).item() for k, v in layer.solver_stats().items()}
        rows.append({"impl": label, "iterations_forward": stats["iterations_forward"],
                     "iterations_backward": stats["iterations_backward"],
                     "compiled": layer.compiled_path,
                     "first_call_seconds": first_calls[label],
                     "output_checksum": checksum})
    rows.append({"impl": "torchdeq", "iterations_forward": torch_info["iterations_forward"],
                 "iterations_backward": torch_info["iterations_backward"],
                 "output_checksum": torch_side.info["checksum"],
                 "threads": torch_side.info["threads"], "torch": torch_side.info["version"]})
    for row in rows:
        walls, cpus = zip(*samples[row["impl"]])
        row.update(case=case, batch=batch, seconds=statistics.median(walls),
                   cpu_seconds=statistics.median(cpus), samples=samples[row["impl"]])
    for row in rows:
        row["ratio"] = row["seconds"] / rows[-1]["seconds"]
        row["cpu_ratio"] = row["cpu_seconds"] / rows[-1]["cpu_seconds"]
        evaluations = row["iterations_forward"] + (row["iterations_backward"] or 0)
        row["seconds_per_iteration"] = row["seconds"] / max(evaluations, 1)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", default="/tmp/torchvenv/bin/python",
                        help="interpreter with torch and torchdeq")
    parser.add_argument("--repeats", type=int, default=7,
                        help="alternating samples of each side (the protocol asks >= 5)")
    parser.add_argument("--inner", type=int, default=3, help="training steps per sample")
    parser.add_argument("--cases", default="conv,dense")
    parser.add_argument("--batches", default="64,128")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of each framework (TensorFlow intra- and inter-op)")
    parser.add_argument("--loss", default="sum", choices=LOSSES,
                        help="sum(z* c) / batch (default) or mean(z* c)")
    parser.add_argument("--json", default=None, help="also write the rows to this path")
    parser.add_argument("--torch-side", nargs=3, metavar=("CASE", "BATCH", "NPZ"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_side:
        case, batch, npz_path = args.torch_side
        run_torch(case, int(batch), npz_path, args.threads, args.inner, args.loss)
        return 0
    cases = args.cases.split(",")
    unknown = sorted(set(cases) - set(CASES))
    if unknown or args.repeats < 1 or args.inner < 1:
        sys.exit(f"--cases must name {sorted(CASES)}, --repeats and --inner must be >= 1. "
                 f"Received: --cases={args.cases}, --repeats={args.repeats}, "
                 f"--inner={args.inner}")
    batches = [int(b) for b in args.batches.split(",")]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peers

    peers.check_interpreter("--torch-python", args.torch_python, "torch, torchdeq")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            for batch in batches:
                rows.extend(compare(case, batch, args, tmp))
    print(f"tensorflow {tf.__version__}, torch {rows[-1]['torch']}, {args.threads} thread(s); "
          f"median of {args.repeats} alternating samples of {args.inner} steps; loss {args.loss}")
    print(f"{'case':6}{'batch':>6} {'impl':18}{'compiled':>9}{'ms/step':>9}{'cpu ms':>9}"
          f"{'fwd it':>7}{'bwd it':>7}{'ms/it':>7}{'|z*| sum':>13}{'wall ratio':>11}"
          f"{'cpu ratio':>10}")
    for r in rows:
        backward = "-" if r["iterations_backward"] is None else r["iterations_backward"]
        print(f"{r['case']:6}{r['batch']:>6} {r['impl']:18}{r.get('compiled') or '-':>9}"
              f"{1e3 * r['seconds']:>9.1f}{1e3 * r['cpu_seconds']:>9.1f}"
              f"{r['iterations_forward']:>7}{backward:>7}"
              f"{1e3 * r['seconds_per_iteration']:>7.2f}{r['output_checksum']:>13.2f}"
              f"{r['ratio']:>10.2f}x{r['cpu_ratio']:>9.2f}x")
    if args.json:
        peers.write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
