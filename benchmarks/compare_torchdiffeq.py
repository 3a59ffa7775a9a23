"""The ODE-Net block: keras_implicit vs raw tfp.math.ode vs torchdiffeq, in one run.

    python benchmarks/compare_torchdiffeq.py --torch-python /path/to/venv/bin/python

The TensorFlow side builds the block (6x6x64 state, two time-concatenated
3x3 convolutions with GroupNorm, dopri5 at rtol = atol = 1e-3, loss = mean of
squares), writes its weights and input to a temporary .npz, and starts the
torchdiffeq side in the given interpreter (a scratch venv with torch and
torchdiffeq; neither is a dependency of keras_implicit) on the same weights
and input, so NFE counts are directly comparable. The torch process stays up:
each of the ``--repeats`` rounds (>= 5 for the protocol) times one forward +
backward step of every variant of ours (the order reversed every other
round), of raw ``tfp.math.ode`` and then of torchdiffeq (adjoint and
backprop), so the samples of the two sides alternate and share the machine's
state; ``--settle`` seconds of rest separate the sides, and each side then runs
one untimed step (after a rest a process runs about 2x slower for its first tens
of milliseconds, TensorFlow's graph executor more than torch). Prints one table: the
median over the rounds (ours with the defaults, ``jit_dynamics="auto"``, first,
then with ``False`` and ``True``), the range of the samples, forward and
backward NFE, and the ratio to torchdiffeq with the same gradient mode. Not
run by asv or pytest; nothing is asserted.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

BATCHES = (64, 128)


def tensorflow_side(batch, npz_path):
    """``[(label, gradient, step, layer)]`` (each step traced and run once), the input and
    the first-call seconds of each label and gradient."""
    import numpy as np

    sys.path.insert(0, os.path.dirname(__file__))
    import bench_ode_block as block

    layer = block.make_block("adjoint")
    x = block.make_input(batch)
    weights = {w.path: w.numpy() for w in layer.dynamics.weights}
    np.savez(npz_path, x=x, **{k.replace("/", "__"): v for k, v in weights.items()})
    variants, first_calls = [], {}
    for jit_dynamics in ("auto", False, True):
        label = {"auto": "ki defaults", False: "ki jit False", True: "ki jit True"}[jit_dynamics]
        for gradient in ("adjoint", "backprop"):
            layer = block.make_block(gradient, jit_dynamics=jit_dynamics)
            step = block.make_train_step(layer)
            start = time.perf_counter()
            step(x)[0].numpy()
            first_calls[label, gradient] = time.perf_counter() - start
            variants.append((label, gradient, step, layer))
    raw = block.make_raw_tfp_step(block.make_block("adjoint"))
    raw(x)
    variants.append(("raw tfp.math.ode", "adjoint (TFP)", raw, None))
    return variants, x, first_calls


TORCH_SIDE = r'''
import json, statistics, sys, time
import numpy as np
import torch
import torchdiffeq

torch.set_num_threads(int(sys.argv[2]))
data = np.load(sys.argv[1])
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
        self.norm1, self.norm2, self.norm3 = (group_norm(prefix + n)
                                              for n in ("norm1", "norm2", "norm3"))
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
steps, info = {}, {"threads": torch.get_num_threads(), "torch": torch.__version__}
for gradient in ("adjoint", "backprop"):
    solve = torchdiffeq.odeint_adjoint if gradient == "adjoint" else torchdiffeq.odeint

    def step(solve=solve):
        func.zero_grad()
        func.nfe = 0
        out = solve(func, x, times, rtol=1e-3, atol=1e-3, method="dopri5")[-1]
        forward = func.nfe
        loss = (out ** 2).mean()
        loss.backward()
        return forward, func.nfe - forward, out

    for _ in range(2):
        forward, backward, out = step()
    steps[gradient] = step
    info[gradient] = {"nfe_forward": forward,
                      "nfe_backward": backward if gradient == "adjoint" else 0,
                      "output_checksum": float(out.detach().abs().sum())}
print(json.dumps(info), flush=True)
for _ in sys.stdin:
    steps["adjoint"]()  # untimed: after the rest, the first step runs on cold threads
    sample = {}
    for gradient, step in steps.items():
        start = time.perf_counter()
        step()
        sample[gradient] = time.perf_counter() - start
    print(json.dumps(sample), flush=True)
'''


def compare(batch, args, tmp):
    """The rows of one batch: each variant of ours, raw TFP, then torchdiffeq."""
    import numpy as np
    import peers

    npz = os.path.join(tmp, f"block_{batch}.npz")
    variants, x, first_calls = tensorflow_side(batch, npz)
    script = os.path.join(tmp, "torch_side.py")
    with open(script, "w") as handle:
        handle.write(TORCH_SIDE)
    torch_side = peers.PeerProcess(
        "torchdiffeq", [args.torch_python, script, npz, str(args.torch_threads)],
        os.path.join(tmp, f"torch_{batch}.txt"))
    for _, _, step, _ in variants:  # warm again once all exist
        step(x)[0].numpy()
    samples = {(label, gradient): [] for label, gradient, _, _ in variants}
    samples.update({("torchdiffeq", g): [] for g in ("adjoint", "backprop")})
    for round_index in range(args.repeats):
        order = variants if round_index % 2 == 0 else variants[::-1]
        order[0][2](x)[0].numpy()  # untimed: after the rest, the first step runs cold
        for label, gradient, step, _ in order:
            start = time.perf_counter()
            step(x)[0].numpy()
            samples[label, gradient].append(time.perf_counter() - start)
        time.sleep(args.settle)
        for gradient, seconds in torch_side.read("sample").items():
            samples["torchdiffeq", gradient].append(seconds)
        time.sleep(args.settle)
    torch_side.close()
    rows = []
    for label, gradient, step, layer in variants:
        row = {"impl": label, "gradient": gradient, "batch": batch}
        if layer is None:  # raw TFP: its step returns the forward NFE third
            row.update(nfe_forward=int(step(x)[2]), nfe_backward=None)
        else:
            stats = {k: int(v) for k, v in layer.solver_stats().items()}
            row.update(nfe_forward=stats["nfe_forward"],
                       nfe_backward=stats["nfe_backward"] if gradient == "adjoint" else 0,
                       first_call_seconds=first_calls[label, gradient],
                       output_checksum=float(np.abs(layer(x).numpy()).sum()))
        rows.append(row)
    for gradient in ("adjoint", "backprop"):
        rows.append({"impl": "torchdiffeq", "gradient": gradient, "batch": batch,
                     **torch_side.info[gradient]})
    for row in rows:
        row["samples"] = samples[row["impl"], row["gradient"]]
        row["seconds"] = statistics.median(row["samples"])
    reference = {r["gradient"]: r["seconds"] for r in rows if r["impl"] == "torchdiffeq"}
    for row in rows:
        row["ratio_to_torchdiffeq"] = row["seconds"] / reference.get(row["gradient"],
                                                                     reference["adjoint"])
    return rows, torch_side.info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", required=True,
                        help="interpreter of a venv with torch and torchdiffeq")
    parser.add_argument("--repeats", type=int, default=7,
                        help="alternating rounds (the protocol asks >= 5)")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count())
    parser.add_argument("--settle", type=float, default=0.5,
                        help="seconds of rest between the sides (torch's OpenMP threads "
                             "spin-wait after a step, and would slow ours next)")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peers

    peers.check_interpreter("--torch-python", args.torch_python, "torch, torchdiffeq")
    if args.repeats < 1 or args.settle < 0:
        sys.exit(f"--repeats must be >= 1 and --settle >= 0. Received: --repeats={args.repeats}, "
                 f"--settle={args.settle}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in [int(b) for b in args.batches.split(",")]:
            batch_rows, info = compare(batch, args, tmp)
            rows += batch_rows
    print(f"torch {info['torch']} with {info['threads']} threads; median of {args.repeats} "
          "alternating rounds")
    print(f"{'implementation':<18}{'gradient':<15}{'batch':>6}{'s/step':>9}{'range':>15}"
          f"{'NFE f':>7}{'NFE b':>7}{'vs torchdiffeq':>16}")
    for r in rows:
        backward = "-" if r["nfe_backward"] is None else r["nfe_backward"]
        spread = f"{min(r['samples']):.3f}-{max(r['samples']):.3f}"
        print(f"{r['impl']:<18}{r['gradient']:<15}{r['batch']:>6}{r['seconds']:>9.3f}"
              f"{spread:>15}{r['nfe_forward']:>7}{backward:>7}"
              f"{r['ratio_to_torchdiffeq']:>15.2f}x")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
