"""A small dense dynamics, forward solve: keras_implicit vs diffrax (JAX), in one run.

    python benchmarks/compare_diffrax.py --jax-python /path/to/venv/bin/python [--json out.json]

Issue 12's small dynamics: ``ki.layers.ConcatDense(64, activation="tanh")``,
i.e. ``f(t, y) = tanh([y, t] W + b)`` with ``t`` the last input feature and
``W`` of shape (65, 64) (Keras' (in, out) layout), batch 32, float32, dopri5
at rtol = atol = 1e-3 over t in [0, 1], forward solve only. The TensorFlow side
builds the layer, writes its weights and input to a temporary .npz and starts
the JAX side in the given interpreter (a scratch venv with ``jax[cpu]``,
diffrax and equinox; none is a dependency of keras_implicit, which never
imports JAX). It computes the same f from the same weights (checked: ``max
|f_ours - f_jax|``) and solves with ``diffrax.Dopri5``, ``PIDController(rtol,
atol)`` (default I-controller: safety 0.9, step factor in [0.2, 10], as ours)
and ``dt0=None`` (automatic first step, as ours), under ``jax.jit``.

Each timing is the median of ``--repeats`` (>= 5 for the protocol) samples
taken after warm-up, alternating between the two processes (each waits while
the other runs, ``--settle`` seconds of rest between them, then 0.1 s of
untimed solves on the side about to be timed: after a rest a process runs
about 2x slower for its first tens of milliseconds, TensorFlow's graph executor
more than XLA; our variants' order reversed every other round): per call, one
solve as its own compiled call (mean of ``--inner`` calls); loop, 20 dependent
solves (each output is the next input) inside ONE compiled call
(``tf.while_loop`` in a ``tf.function``; ``jax.lax.fori_loop`` in ``jax.jit``) /
20, the one that matters inside a training step (each side's timed loop runs the
solves alone; ours counts their NFE in a separate, untimed loop, as diffrax's callback
does); f, one evaluation inside a compiled loop of chained ones.
Ours runs the defaults first (``jit_dynamics="auto"``: for this dynamics the
whole solve compiled by XLA), then ``jit_dynamics=False`` (TensorFlow's graph),
``jit_dynamics=True`` (f in XLA, the solver loop in the graph) and the whole
function under ``tf.function(jit_compile=True)``. Also printed: NFE of the
first solve and mean NFE of the loop's solves (diffrax's counted by a callback
in untimed runs), overhead = loop time per solve / (loop NFE x f on the same
executor), the largest difference of the final state from diffrax's (two
solves to 1e-3 taking different steps differ by about the tolerance; the JSON
also has it after the 20 solves) and the ratios ours / diffrax. Not run by asv
or pytest; nothing is asserted.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

BATCH, FEATURES, RTOL, ATOL, LOOP, CHAINED, MAX_STEPS = 32, 64, 1e-3, 1e-3, 20, 500, 10_000

JAX_SIDE = r'''
import json, sys, time
from importlib.metadata import version
import numpy as np
import jax, jax.numpy as jnp, diffrax

npz, out_path, inner, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[5])
rtol, atol, loop_n, chained, max_steps = json.loads(sys.argv[4])
kernel, bias, x = (jnp.asarray(np.load(npz)[k]) for k in ("kernel", "bias", "x"))
count = [0]
def f(t, y, args):  # ki.layers.ConcatDense: dense(concat([y, t])), t the last feature
    time_column = jnp.full(y.shape[:-1] + (1,), t, y.dtype)
    return jnp.tanh(jnp.concatenate([y, time_column], axis=-1) @ kernel + bias)
def counted_f(t, y, args):
    jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
    return f(t, y, args)
def solve(y, fn=f):
    return diffrax.diffeqsolve(
        diffrax.ODETerm(fn), diffrax.Dopri5(), 0.0, 1.0, None, y, max_steps=max_steps,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True)).ys[0]
def make_loop(fn):
    return jax.jit(lambda y: jax.lax.fori_loop(0, loop_n, lambda i, y: solve(y, fn), y))
def nfe(fn, y):
    count[0] = 0
    jax.block_until_ready(fn(y))
    return count[0]

once, loop = jax.jit(solve), make_loop(f)
chain = jax.jit(lambda y: jax.lax.fori_loop(0, chained, lambda i, y: f(0.5, y, None), y))
start = time.perf_counter()
for _ in range(2):
    y1, y_loop, _ = (fn(x).block_until_ready() for fn in (once, loop, chain))
warm_up = time.perf_counter() - start
nfe_first = nfe(jax.jit(lambda y: solve(y, counted_f)), x)
nfe_loop = nfe(make_loop(counted_f), x) / loop_n
np.savez(out_path, y1=y1, y_loop=y_loop, f=f(0.5, x, None))
print(json.dumps({"nfe": nfe_first, "nfe_loop": nfe_loop, "warm_up_seconds": warm_up,
                  "versions": {p: version(p) for p in ("jax", "diffrax", "equinox")}}), flush=True)
def timed(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn(x).block_until_ready()
    return time.perf_counter() - start
for line in sys.stdin:
    start = time.perf_counter()  # untimed: after the rest, the first work runs on cold threads
    while time.perf_counter() - start < warm:
        loop(x).block_until_ready()
    print(json.dumps({"call": timed(once, inner) / inner, "loop": timed(loop, 1) / loop_n,
                      "f": timed(chain, 1) / chained}), flush=True)
'''


def _start_jax_side(python, tmp, npz, inner):
    """The JAX process, compiled and warm once its ``info`` is read."""
    import peers

    script = os.path.join(tmp, "jax_side.py")
    with open(script, "w") as handle:
        handle.write(JAX_SIDE)
    settings = json.dumps([RTOL, ATOL, LOOP, CHAINED, MAX_STEPS])
    return peers.PeerProcess(
        "JAX", [python, script, npz, os.path.join(tmp, "jax_out.npz"), str(inner), settings,
                str(peers.WARM_SECONDS)],
        os.path.join(tmp, "jax_stderr.txt"))


def tensorflow_side(npz_path):
    """The layer, its input, ``{variant: (once, loop, counted loop)}`` and
    ``{executor: chained f}``."""
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_implicit as ki

    keras.utils.set_random_seed(0)
    layer = ki.layers.ConcatDense(FEATURES, activation="tanh")
    layer.build((BATCH, FEATURES))
    x = tf.random.normal((BATCH, FEATURES), seed=1)
    np.savez(npz_path, x=x.numpy(), kernel=layer.dense.kernel.numpy(),
             bias=layer.dense.bias.numpy())

    def solve(y, jit_dynamics):
        options = {} if jit_dynamics is None else {"jit_dynamics": jit_dynamics}
        result = ki.ops.odeint(lambda t, s: layer(s, t=t), y, [0.0, 1.0], solver="dopri5",
                               rtol=RTOL, atol=ATOL, max_num_steps=MAX_STEPS, **options)
        return result.states[-1], result.stats.forward_nfe

    def compiled(jit_dynamics, jit_compile):
        def counted_loop(y):  # the last state and the NFE of all solves (untimed)
            def body(i, y, nfe):
                y, n = solve(y, jit_dynamics)
                return i + 1, y, nfe + n
            return tf.while_loop(lambda i, y, nfe: i < LOOP, body, (0, y, 0))[1:]

        def loop(y):  # timed: the solves alone, as on the JAX side
            return tf.while_loop(lambda i, y: i < LOOP,
                                 lambda i, y: (i + 1, solve(y, jit_dynamics)[0]), (0, y))[1]
        return (tf.function(lambda y: solve(y, jit_dynamics), jit_compile=jit_compile),
                tf.function(loop, jit_compile=jit_compile),
                tf.function(counted_loop, jit_compile=jit_compile))

    def chain(jit_compile):
        t = tf.constant(0.5)
        return tf.function(lambda y: tf.while_loop(
            lambda i, y: i < CHAINED, lambda i, y: (i + 1, layer(y, t=t)), (0, y))[1],
            jit_compile=jit_compile)

    variants = {"ki defaults": compiled(None, False), "ki jit_dynamics=False":
                compiled(False, False), "ki jit_dynamics=True": compiled(True, False),
                "ki jit_compile": compiled(False, True)}
    return layer, x, variants, {"graph": chain(False), "xla": chain(True)}


def _timed(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jax-python", required=True,
                        help="interpreter of a venv with jax[cpu], diffrax and equinox")
    parser.add_argument("--repeats", type=int, default=7,
                        help="alternating samples of each side (the protocol asks >= 5)")
    parser.add_argument("--inner", type=int, default=20, help="solves per per-call sample")
    parser.add_argument("--settle", type=float, default=0.5,
                        help="seconds of rest between the sides (each runtime's threads "
                             "spin-wait after work, and would slow the other side next)")
    parser.add_argument("--json", default=None, help="also write the rows to this path")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.inner < 1 or args.settle < 0:
        sys.exit(f"--repeats and --inner must be >= 1 and --settle >= 0. Received: "
                 f"--repeats={args.repeats}, --inner={args.inner}, --settle={args.settle}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peers

    peers.check_interpreter("--jax-python", args.jax_python, "jax, diffrax")
    import numpy as np
    import tensorflow as tf

    median = statistics.median
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "weights.npz")
        layer, x, variants, chains = tensorflow_side(npz)
        start = time.perf_counter()
        results = {name: (once(x), counted(x)) for name, (once, _, counted) in variants.items()}
        first_calls = time.perf_counter() - start
        jax_side = _start_jax_side(args.jax_python, tmp, npz, args.inner)
        info = jax_side.info
        jax_out = dict(np.load(os.path.join(tmp, "jax_out.npz")))
        # Warm up again once all exist: building other functions slows a traced one's next call.
        for fn in [f for fns in variants.values() for f in fns[:2]] + list(chains.values()):
            fn(x)
        samples = {name: {"call": [], "loop": []} for name in list(variants) + ["diffrax"]}
        f_samples = {"graph": [], "xla": [], "jax": []}  # f alone, per executor
        for round_index in range(args.repeats):
            order = list(variants.items())
            order = order if round_index % 2 == 0 else order[::-1]
            peers.warm_up(lambda: order[0][1][1](x).numpy())  # after the rest
            for name, (once, loop, _) in order:
                samples[name]["call"].append(
                    _timed(lambda: once(x)[0].numpy(), args.inner) / args.inner)
                samples[name]["loop"].append(_timed(lambda: loop(x).numpy(), 1) / LOOP)
            for executor, chained in chains.items():
                f_samples[executor].append(_timed(lambda: chained(x).numpy(), 1) / CHAINED)
            time.sleep(args.settle)
            jax_sample = jax_side.read("sample")
            time.sleep(args.settle)
            f_samples["jax"].append(jax_sample.pop("f"))
            for key, value in jax_sample.items():
                samples["diffrax"][key].append(value)
        jax_side.close()
    f_seconds = {executor: median(values) for executor, values in f_samples.items()}
    f_difference = float(np.abs(layer(x, t=0.5).numpy() - jax_out["f"]).max())
    outputs = {name: (y1.numpy(), y_loop.numpy(), int(nfe), int(loop_nfe) / LOOP)
               for name, ((y1, nfe), (y_loop, loop_nfe)) in results.items()}
    outputs["diffrax"] = (jax_out["y1"], jax_out["y_loop"], info["nfe"], info["nfe_loop"])
    rows = []
    for name, (y1, y_loop, nfe, nfe_loop) in outputs.items():
        # Where f runs: the defaults compile this dynamics' whole solve with XLA.
        executor = {"ki jit_dynamics=False": "graph", "diffrax": "jax"}.get(name, "xla")
        call, loop = median(samples[name]["call"]), median(samples[name]["loop"])
        rows.append({
            "impl": name, "call_seconds": call, "loop_seconds_per_solve": loop,
            "f_seconds": f_seconds[executor], "f_executor": executor, "nfe": nfe,
            "loop_nfe_per_solve": nfe_loop, "overhead": loop / (nfe_loop * f_seconds[executor]),
            "max_abs_diff_vs_diffrax": float(np.abs(y1 - jax_out["y1"]).max()),
            "loop_max_abs_diff_vs_diffrax": float(np.abs(y_loop - jax_out["y_loop"]).max()),
            "samples": samples[name]})
    for row in rows:
        row["ratio_call"] = row["call_seconds"] / rows[-1]["call_seconds"]
        row["ratio_loop"] = row["loop_seconds_per_solve"] / rows[-1]["loop_seconds_per_solve"]
    versions = {"tensorflow": tf.__version__, **info["versions"]}
    print(", ".join(f"{k} {v}" for k, v in versions.items())
          + f"; median of {args.repeats} alternating samples; max |f_ours - f_jax| "
          f"{f_difference:.1e}; first calls of ours {first_calls:.1f} s, JAX warm-up "
          f"{info['warm_up_seconds']:.1f} s")
    print(f"{'implementation':<16}{'ms/call':>9}{'ms/solve in loop':>17}{'NFE':>4}"
          f"{'NFE loop':>9}{'f ms':>8}{'overhead':>9}{'max|dy|':>9}{'call/diffrax':>13}"
          f"{'loop/diffrax':>13}")
    for r in rows:
        print(f"{r['impl']:<16}{1e3 * r['call_seconds']:>9.3f}"
              f"{1e3 * r['loop_seconds_per_solve']:>17.3f}{r['nfe']:>4}"
              f"{r['loop_nfe_per_solve']:>9.1f}{1e3 * r['f_seconds']:>8.4f}{r['overhead']:>9.2f}"
              f"{r['max_abs_diff_vs_diffrax']:>9.1e}{r['ratio_call']:>12.2f}x"
              f"{r['ratio_loop']:>12.2f}x")
    for executor in ("graph", "xla"):
        print(f"f alone, TensorFlow {executor} / JAX: "
              f"{f_seconds[executor] / f_seconds['jax']:.2f}x")
    if args.json:
        peers.write_json(args.json, {"rows": rows, "versions": versions,
                                     "max_abs_f_diff": f_difference, "repeats": args.repeats,
                                     "inner": args.inner})
    return 0


if __name__ == "__main__":
    sys.exit(main())
