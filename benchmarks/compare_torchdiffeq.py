"""The ODE-Net block: keras_implicit vs raw tfp.math.ode vs torchdiffeq, in one run.

    python benchmarks/compare_torchdiffeq.py --torch-python /path/to/venv/bin/python

The TensorFlow side builds the block (6x6x64 state, two time-concatenated
3x3 convolutions with GroupNorm, dopri5 at rtol = atol = 1e-3, loss = mean of
squares), writes its weights and input to a temporary .npz, and runs the
torchdiffeq side in the given interpreter (a scratch venv with torch and
torchdiffeq; neither is a dependency of keras_implicit) on the same weights
and input, so NFE counts are directly comparable. Prints one table: median
time of a forward + backward step (ours with the defaults, ``jit_dynamics="auto"``,
first, then with ``False`` and ``True``),
forward and backward NFE, and the ratio to torchdiffeq with the same gradient
mode. Not run by asv or pytest.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BATCHES = (64, 128)


def _median_time(step, repeats):
    from keras_implicit.experiments import measure

    return measure.median_seconds(step, repeats)


def run_tensorflow(batch, repeats, npz_path):
    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, os.path.dirname(__file__))
    import bench_ode_block as block

    rows = []
    layer = block.make_block("adjoint")
    x = block.make_input(batch)
    weights = {w.path: w.numpy() for w in layer.dynamics.weights}
    np.savez(npz_path, x=x, **{k.replace("/", "__"): v for k, v in weights.items()})
    variants = [(jit, gradient) for jit in ("auto", False, True)
                for gradient in ("adjoint", "backprop")]
    for jit_dynamics, gradient in variants:
        layer = block.make_block(gradient, jit_dynamics=jit_dynamics)
        step = block.make_train_step(layer)
        start = time.perf_counter()
        step(x)
        first_call = time.perf_counter() - start
        seconds = _median_time(lambda: step(x), repeats)
        stats = {k: int(v) for k, v in layer.solver_stats().items()}
        out = layer(x).numpy()
        label = {"auto": "ki defaults", False: "ki jit False", True: "ki jit True"}[jit_dynamics]
        rows.append({"impl": label,
                     "gradient": gradient, "batch": batch, "seconds": seconds,
                     "first_call_seconds": first_call, "nfe_forward": stats["nfe_forward"],
                     "nfe_backward": stats["nfe_backward"] if gradient == "adjoint" else 0,
                     "output_checksum": float(np.abs(out).sum())})
    layer = block.make_block("adjoint")
    raw = block.make_raw_tfp_step(layer)
    raw(x)
    seconds = _median_time(lambda: raw(x), repeats)
    rows.append({"impl": "raw tfp.math.ode", "gradient": "adjoint (TFP)", "batch": batch,
                 "seconds": seconds, "nfe_forward": int(raw(x)[2]), "nfe_backward": None})
    del tf
    return rows


TORCH_SIDE = r'''
import json, statistics, sys, time
import numpy as np
import torch
import torchdiffeq

torch.set_num_threads(int(sys.argv[3]))
data = np.load(sys.argv[1])
repeats = int(sys.argv[2])
channels = data["x"].shape[-1]
groups = 32 if channels == 64 else 8


class ConcatConv2d(torch.nn.Module):
    def __init__(self, prefix):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels + 1, channels, 3, padding=1)
        kernel = data[prefix + "__conv__kernel"]  # (3, 3, in + 1, out), t is the last input
        self.conv.weight.data = torch.tensor(kernel.transpose(3, 2, 0, 1).copy())
        self.conv.bias.data = torch.tensor(data[prefix + "__conv__bias"])

    def forward(self, t, x):
        tt = torch.ones_like(x[:, :1]) * t
        return self.conv(torch.cat([x, tt], 1))


def group_norm(name):
    norm = torch.nn.GroupNorm(groups, channels, eps=1e-5)
    norm.weight.data = torch.tensor(data[name + "__gamma"])
    norm.bias.data = torch.tensor(data[name + "__beta"])
    return norm


class ODEfunc(torch.nn.Module):
    def __init__(self, prefix):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (group_norm(prefix + n) for n in ("norm1", "norm2", "norm3"))
        self.conv1, self.conv2 = ConcatConv2d(prefix + "conv1"), ConcatConv2d(prefix + "conv2")
        self.nfe = 0

    def forward(self, t, x):
        self.nfe += 1
        out = torch.relu(self.norm1(x))
        out = torch.relu(self.norm2(self.conv1(t, out)))
        return self.norm3(self.conv2(t, out))


prefix = [k for k in data.files if k.endswith("norm1__gamma")][0][: -len("norm1__gamma")]
func = ODEfunc(prefix)
x = torch.tensor(data["x"].transpose(0, 3, 1, 2).copy())
times = torch.tensor([0.0, 1.0])
rows = []
for gradient in ("adjoint", "backprop"):
    solve = torchdiffeq.odeint_adjoint if gradient == "adjoint" else torchdiffeq.odeint

    def step():
        func.zero_grad()
        func.nfe = 0
        out = solve(func, x, times, rtol=1e-3, atol=1e-3, method="dopri5")[-1]
        forward = func.nfe
        loss = (out ** 2).mean()
        loss.backward()
        return forward, func.nfe - forward, out

    for _ in range(2):
        step()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward, backward, out = step()
        seconds.append(time.perf_counter() - start)
    rows.append({"impl": "torchdiffeq", "gradient": gradient, "batch": int(x.shape[0]),
                 "seconds": statistics.median(seconds), "nfe_forward": forward,
                 "nfe_backward": backward if gradient == "adjoint" else 0,
                 "output_checksum": float(out.detach().abs().sum())})
print(json.dumps(rows))
'''


def run_torch(python, npz_path, repeats, threads):
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(TORCH_SIDE)
    result = subprocess.run([python, script.name, npz_path, str(repeats), str(threads)],
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"The torchdiffeq side failed ({python}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", required=True,
                        help="interpreter of a venv with torch and torchdiffeq")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peers

    peers.check_interpreter("--torch-python", args.torch_python, "torch, torchdiffeq")
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            npz = os.path.join(tmp, "block.npz")
            tf_rows = run_tensorflow(batch, args.repeats, npz)
            torch_rows = run_torch(args.torch_python, npz, args.repeats, args.torch_threads)
        reference = {r["gradient"]: r["seconds"] for r in torch_rows}
        for row in tf_rows + torch_rows:
            base = reference.get(row["gradient"], reference["adjoint"])
            row["ratio_to_torchdiffeq"] = row["seconds"] / base
        rows += tf_rows + torch_rows
    header = f"{'implementation':<18}{'gradient':<15}{'batch':>6}{'s/step':>9}{'NFE f':>7}{'NFE b':>7}{'vs torchdiffeq':>16}"
    print(header)
    for r in rows:
        backward = "-" if r["nfe_backward"] is None else r["nfe_backward"]
        print(f"{r['impl']:<18}{r['gradient']:<15}{r['batch']:>6}{r['seconds']:>9.3f}"
              f"{r['nfe_forward']:>7}{backward:>7}{r['ratio_to_torchdiffeq']:>15.2f}x")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
