"""Every asv benchmark in benchmarks/ runs once, in-process, in quick mode: a broken
benchmark fails CI.

The modules are imported with ``KERAS_IMPLICIT_BENCH_QUICK=1`` (they shrink
their sizes; see benchmarks/README.md). For each benchmark class (or
module-level benchmark function), the first value of every parameter is used:
``setup_cache`` once, ``setup`` once, then every ``time_`` / ``timeraw_`` /
``peakmem_`` / ``mem_`` / ``track_`` benchmark of the class once, then
``teardown``. A ``setup`` raising ``NotImplementedError`` skips, as under asv.
Nothing is timed.
"""

import importlib
import inspect
import os
import pathlib
import pkgutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.plain_graph  # each benchmark runs, untimed; the paths' numbers:
# tests/ops/test_compile_policy.py (tests/conftest.py)

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICK_VARIABLE = "KERAS_IMPLICIT_BENCH_QUICK"
PREFIXES = ("time_", "timeraw_", "peakmem_", "mem_", "track_")


def _import_benchmark_modules():
    """Imports benchmarks.* freshly in quick mode; restores the environment after."""
    saved = dict(os.environ)
    os.environ[QUICK_VARIABLE] = "1"
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    for name in [n for n in sys.modules if n == "benchmarks" or n.startswith("benchmarks.")]:
        del sys.modules[name]
    try:
        package = importlib.import_module("benchmarks")
        assert pathlib.Path(package.__file__).parent == REPO / "benchmarks", package.__file__
        return [importlib.import_module(f"benchmarks.{info.name}")
                for info in pkgutil.iter_modules(package.__path__)]
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _normalized_params(source):
    params = getattr(source, "params", [])
    if params and not isinstance(params[0], (list, tuple)):
        params = [params]
    return [list(values) for values in params]


def _groups():
    """[(id, module, class or None, [benchmark names])] in a stable order."""
    groups = []
    for module in _import_benchmark_modules():
        for name, value in sorted(vars(module).items()):
            if name.startswith("_"):
                continue
            if inspect.isclass(value) and value.__module__ == module.__name__:
                methods = sorted(m for m, _ in inspect.getmembers(value, inspect.isfunction)
                                 if m.startswith(PREFIXES))
                if methods:
                    groups.append((f"{module.__name__}.{name}", module, value, methods))
            elif inspect.isfunction(value) and name.startswith(PREFIXES):
                groups.append((f"{module.__name__}.{name}", module, None, [name]))
    return groups


GROUPS = _groups()


def test_benchmarks_are_found():
    names = {group_id.split(".")[1] for group_id, *_ in GROUPS}
    assert {"bench_mnist_models", "bench_memory_scaling", "bench_solver_overhead",
            "bench_compile_time"} <= names, names


@pytest.mark.parametrize("group_id, module, klass, names", GROUPS, ids=[g[0] for g in GROUPS])
def test_benchmark_runs_once(group_id, module, klass, names):
    owner = klass() if klass is not None else module
    functions = {name: getattr(owner, name) for name in names}
    params = _normalized_params(klass or functions[names[0]])
    param_names = getattr(klass or functions[names[0]], "param_names", None)
    if params:
        assert param_names is not None and len(param_names) == len(params), (
            f"{group_id}: param_names must name each of the {len(params)} parameters")
        assert all(values for values in params), f"{group_id}: an empty parameter list"
    args = [values[0] for values in params]
    setup_cache = getattr(owner, "setup_cache", None) if klass is not None else None
    if setup_cache is not None:
        args = [setup_cache()] + args
    for name, function in functions.items():
        count = len(inspect.signature(function).parameters)
        assert count == len(args), (
            f"{group_id}.{name} takes {count} arguments; asv passes {len(args)}")

    setup = getattr(owner, "setup", None) if klass is not None else getattr(
        functions[names[0]], "setup", None)
    teardown = getattr(owner, "teardown", None) if klass is not None else getattr(
        functions[names[0]], "teardown", None)
    if setup is not None:
        try:
            setup(*args)
        except NotImplementedError as error:
            pytest.skip(f"{group_id}: setup skips (as under asv): {error}")
    try:
        for name, function in functions.items():
            result = function(*args)
            if name.startswith("track_"):
                assert isinstance(result, (int, float)) and not isinstance(result, bool), (
                    f"{group_id}.{name} must return a number. Received: {result!r}")
    finally:
        if teardown is not None:
            teardown(*args)


SCRIPTS = sorted(path.name for path in (REPO / "benchmarks").glob("*.py")
                 if 'if __name__ == "__main__":' in path.read_text())


def test_the_scripts_are_found():
    assert {"compare_torchdiffeq.py", "compare_tfp_ffjord.py", "compare_diffrax.py",
            "bench_gradient_memory.py"} <= set(SCRIPTS), SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help_from_any_directory(script, tmp_path):
    # As a new user runs them (README: python benchmarks/NAME.py), from another directory:
    # `--help` prints the usage and runs nothing (bench_gradient_memory.py took --help for a
    # 3-minute run, and compare_tfp_ffjord.py failed to import its package as a script).
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--help"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:"), result.stdout[:500]


def test_bench_gradient_memory_refuses_bad_arguments_before_running(tmp_path):
    script = str(REPO / "benchmarks" / "bench_gradient_memory.py")
    for argument, expected in ((["--intervals", "0,1"], "--intervals must be"),
                               (["--gradients", "adjoint,reverse"], "['reverse']")):
        result = subprocess.run([sys.executable, script, *argument], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and expected in result.stderr, result.stderr[-2000:]
