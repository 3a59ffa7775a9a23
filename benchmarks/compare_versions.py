"""Two versions of keras_implicit, benchmark by benchmark, in alternating processes.

    python benchmarks/compare_versions.py --base fd27aa1 [--head main] [--bench REGEX]
                                          [--rounds 5] [--calls 3] [--json out.json]

``asv continuous`` runs one commit's suite after the other's, one sample each
with ``--quick``: on a shared, noisy machine that cannot resolve 5%. Here each
version is a directory holding its ``keras_implicit/`` and ``benchmarks/``
(``git archive REF``; ``--head`` defaults to this working tree), and one worker
process per version imports that directory first on ``sys.path`` (checked: the
worker reports where ``keras_implicit`` came from, so an editable install of
another tree cannot stand in). Both workers run in this interpreter, with its
TensorFlow. The benchmarks both suites define (same module, class, method and
parameters) run in alternating rounds: each ``time_`` benchmark is set up once
per side, called untimed for at least 0.1 s per round (a process that waited while
the other side ran is about 2x slower for its first tens of milliseconds), then
``--calls`` timed calls per round for ``--rounds`` rounds, the order of the sides
swapped every other round; a ``track_`` benchmark returns one value per round,
after the same warm-up, if its name holds ``ratio`` or ``seconds`` (timings), else
once. ``peakmem_`` benchmarks, and by default the
modules that need a fresh process (``bench_compile_time``: a first call;
``bench_memory_scaling``: TensorFlow's allocator chosen at start), are left to
asv, which runs each benchmark in a process of its own. Printed per benchmark: the
medians of each side, head / base, the ranges, and ``SLOWER`` / ``faster`` beyond
5%. The workers run the benchmarks in the same order, so what one benchmark leaves
behind in a process (XLA's thread pools, allocator state) is alike on both sides,
as long as both suites run the same selection. Not run by asv or pytest.
"""

import argparse
import ast
import importlib
import inspect
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

# A first call (bench_compile_time) and TensorFlow's allocator chosen before it starts
# (bench_memory_scaling) need a fresh process per benchmark: asv gives them one.
DEFAULT_BENCH = r"^(?!bench_compile_time|bench_memory_scaling)"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _listing(bench_dir):
    """Every (module, class, method, parameter reprs) of the suite in ``bench_dir``."""
    rows = []
    for filename in sorted(os.listdir(bench_dir)):
        if not (filename.startswith("bench_") and filename.endswith(".py")):
            continue
        module = importlib.import_module("benchmarks." + filename[:-3])
        for class_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            params = getattr(cls, "params", [])
            if params and not isinstance(params[0], (list, tuple)):
                params = [params]
            combos = list(itertools.product(*params)) if params else [()]
            for method in sorted(m for m in dir(cls) if m.startswith(("time_", "track_"))):
                rows += [[filename[:-3], class_name, method, [repr(p) for p in combo]]
                         for combo in combos]
    return rows


class _Worker:
    """One side: set up a benchmark once, run its method on request."""

    def __init__(self):
        self.key = self.instance = self.values = None

    def _teardown(self):
        if self.instance is not None and hasattr(self.instance, "teardown"):
            self.instance.teardown(*self.values)
        self.key = self.instance = self.values = None

    def run(self, module, class_name, method, params, calls):
        values = [ast.literal_eval(p) for p in params]
        key = (module, class_name, tuple(params))
        if self.key != key:
            self._teardown()
            cls = getattr(importlib.import_module("benchmarks." + module), class_name)
            instance = cls()
            if hasattr(instance, "setup"):
                try:
                    instance.setup(*values)
                except NotImplementedError:  # asv's "skipped"
                    return {"skipped": True}
            self.key, self.instance, self.values = key, instance, values
        function = getattr(self.instance, method)
        if _repeated(method):  # after waiting for the other side
            import peers  # the harness's own (this script's directory), on both sides

            peers.warm_up(lambda: function(*values))
        if method.startswith("track_"):
            return {"samples": [function(*values)]}
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            function(*values)
            samples.append(time.perf_counter() - start)
        return {"samples": samples}

    def serve(self, root):
        sys.path.insert(0, root)
        import keras_implicit

        print(json.dumps({"keras_implicit": os.path.dirname(keras_implicit.__file__)}),
              flush=True)
        for line in sys.stdin:
            request = json.loads(line)
            try:
                if request[0] == "list":
                    reply = {"list": _listing(os.path.join(root, "benchmarks"))}
                else:
                    reply = self.run(*request[1:])
            except Exception as error:  # reported per benchmark, the run goes on
                self._teardown()
                reply = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
            print(json.dumps(reply), flush=True)


def _checkout(ref, tmp):
    """A directory with ``keras_implicit/`` and ``benchmarks/`` of ``ref`` (``None``: this
    working tree)."""
    if ref is None:
        return REPO
    target = os.path.join(tmp, re.sub(r"[^\w.-]", "_", ref))
    os.makedirs(target)
    archive = os.path.join(tmp, "archive.tar")
    result = subprocess.run(["git", "-C", REPO, "archive", "-o", archive, ref, "keras_implicit",
                             "benchmarks"], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"--base/--head: git cannot archive {ref!r}: {result.stderr.strip()}")
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    os.remove(archive)
    return target


def _repeated(method):
    """Whether ``method`` is timed (warmed up and sampled every round): ``time_``, and
    ``track_`` benchmarks that return a time or a ratio of times."""
    return method.startswith("time_") or "ratio" in method or "seconds" in method


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="git ref of the version compared against (required)")
    parser.add_argument("--head", default=None, help="git ref (default: this working tree)")
    parser.add_argument("--bench", default=DEFAULT_BENCH,
                        help="regex searched in 'module.Class.method(params)' (default: all "
                             "but the suites that need a fresh process)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per round")
    parser.add_argument("--json", default=None, help="also write the rows to this path")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _Worker().serve(args.worker)
    if not args.base:
        parser.error("the following arguments are required: --base")
    if args.rounds < 1 or args.calls < 1:
        sys.exit(f"--rounds and --calls must be >= 1. Received: --rounds={args.rounds}, "
                 f"--calls={args.calls}")
    try:
        pattern = re.compile(args.bench)
    except re.error as error:
        sys.exit(f"--bench is not a regular expression ({error}). Received: {args.bench!r}")
    sys.path.insert(0, HERE)
    import peers

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sides = {}
        for side, ref in (("base", args.base), ("head", args.head)):
            root = _checkout(ref, tmp)
            sides[side] = peers.PeerProcess(
                f"{side} worker", [sys.executable, os.path.abspath(__file__), "--worker", root],
                os.path.join(tmp, f"{side}_stderr.txt"))
            found = sides[side].info["keras_implicit"]
            if os.path.dirname(os.path.realpath(found)) != os.path.realpath(root):
                sys.exit(f"The {side} worker imported keras_implicit from {found}, not {root}.")
            print(f"{side}: {ref or 'working tree'} ({found})", flush=True)
        suites = {side: {json.dumps(row) for row in worker.read(json.dumps(["list"]))["list"]}
                  for side, worker in sides.items()}
        common = [json.loads(row) for row in sorted(suites["base"] & suites["head"])]
        selected = [row for row in common
                    if pattern.search(f"{row[0]}.{row[1]}.{row[2]}({', '.join(row[3])})")]
        print(f"{len(common)} benchmarks in both suites ({len(suites['head'] - suites['base'])} "
              f"only in head), {len(selected)} selected; {args.rounds} rounds of {args.calls} "
              "calls", flush=True)
        for module, class_name, method, params in selected:
            name = f"{module}.{class_name}.{method}({', '.join(params)})"
            samples, problems = {"base": [], "head": []}, {}
            for round_index in range(args.rounds if _repeated(method) else 1):
                order = ["base", "head"] if round_index % 2 == 0 else ["head", "base"]
                for side in order:
                    reply = sides[side].read(json.dumps(
                        ["run", module, class_name, method, params, args.calls]))
                    if "samples" in reply:
                        samples[side].append(statistics.median(reply["samples"]))
                    else:
                        problems[side] = reply.get("error", "skipped")
            if problems:
                print(f"{name}: {problems}", flush=True)
                rows.append({"benchmark": name, "problems": problems})
                continue
            base, head = (statistics.median(samples[s]) for s in ("base", "head"))
            ratio = head / base if base else float("nan")
            flag = "  SLOWER" if ratio > 1.05 else "  faster" if ratio < 0.95 else ""
            print(f"{name}: base {base:.4g} head {head:.4g} ratio {ratio:.3f}{flag} "
                  f"[base {min(samples['base']):.4g}-{max(samples['base']):.4g}, head "
                  f"{min(samples['head']):.4g}-{max(samples['head']):.4g}]", flush=True)
            rows.append({"benchmark": name, "base": base, "head": head, "ratio": ratio,
                         "samples": samples})
        for worker in sides.values():
            worker.close()
    if args.json:
        peers.write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
