"""Starting a cluster of worker processes on 127.0.0.1 for the tests, and always ending it.

Each worker is ``python SCRIPT ARGS`` with its own ``TF_CONFIG`` (free ports
picked at run time), this checkout first on ``PYTHONPATH`` and one TensorFlow
thread per op (the workers share the CI's cores with the pytest-xdist
workers). Every wait has a deadline; every process started here is killed
before the function that started it returns.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import keras_implicit

MAIN = pathlib.Path(__file__).resolve().with_name("multi_worker_main.py")
CHECKOUT = pathlib.Path(keras_implicit.__file__).resolve().parents[1]
DEFAULT_TIMEOUT = 300.0
_PORT_TAKEN = ("Address already in use", "Could not start gRPC server")


def free_ports(count):
    """``count`` distinct ports that were free a moment ago (the OS picks them)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_env(cluster, index):
    env = dict(os.environ)
    env["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                   "task": {"type": "worker", "index": index}})
    env["PYTHONPATH"] = os.pathsep.join(
        [str(CHECKOUT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["KERAS_BACKEND"] = "tensorflow"
    env["TF_NUM_INTRAOP_THREADS"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


class Worker:
    """A worker process and the file holding its stdout and stderr."""

    def __init__(self, process, log_path):
        self.process = process
        self.log_path = log_path

    @property
    def returncode(self):
        return self.process.returncode

    def log(self, tail=4000):
        return self.log_path.read_text(errors="replace")[-tail:]


def start_workers(args, log_dir, num_workers=2, indices=None, script=MAIN, cwd=None):
    """Starts the workers ``indices`` (default all) of a ``num_workers`` cluster."""
    ports = free_ports(num_workers)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    try:
        for index in range(num_workers) if indices is None else indices:
            log_path = pathlib.Path(log_dir) / f"worker{index}.{time.monotonic_ns()}.log"
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [sys.executable, str(script), *args], env=worker_env(cluster, index),
                    stdout=log, stderr=subprocess.STDOUT, cwd=str(cwd or MAIN.parent))
            workers.append(Worker(process, log_path))
    except BaseException:
        kill(workers)
        raise
    return workers


def wait(workers, timeout):
    """Waits for every worker to exit; False if the deadline passed first."""
    deadline = time.monotonic() + timeout
    for worker in workers:
        try:
            worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
    return True


def kill(workers):
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def report(workers):
    return "\n".join(f"--- worker {i} (exit code {w.returncode}):\n{w.log()}"
                     for i, w in enumerate(workers))


def run_cluster(args, log_dir, timeout=DEFAULT_TIMEOUT, num_workers=2, script=MAIN, cwd=None):
    """Runs a whole cluster to completion; fails (with the logs) on a timeout or a crash.

    A port taken by another process between picking and binding it is retried
    with new ports (twice).
    """
    for attempt in range(3):
        workers = start_workers(args, log_dir, num_workers, script=script, cwd=cwd)
        try:
            finished = wait(workers, timeout)
        finally:
            kill(workers)
        if not finished:
            raise AssertionError(f"The cluster did not finish within {timeout} s:\n"
                                 f"{report(workers)}")
        if all(w.returncode == 0 for w in workers):
            return workers
        if attempt == 2 or not any(m in w.log() for w in workers for m in _PORT_TAKEN):
            raise AssertionError(f"A worker failed:\n{report(workers)}")
