"""Two worker processes on 127.0.0.1: ``MultiWorkerMirroredStrategy`` and ``ki.distribute.fit``.

The references are one process training the same model on the same global
batches with Keras's own ``fit`` (``training_cases.train_one_process``),
computed here while the workers run.

- Exact cases (ContinuousFlow with the exact trace, LatentODE without noise;
  the fixed-grid rk4 NeuralODE with the adjoint in the killed-worker test,
  which ends with the weights of one process too): each sample's loss and
  gradient do not depend on the shard holding it, so the weights match to
  round-off, ``EXACT_TOLERANCE`` = 1e-5 relative.
- Tolerance cases (dopri5 NeuralODE by backprop, DEQ with the implicit
  gradient): the step sizes, or the number of iterations, are decided over
  each replica's shard, so the weights match to the solver's tolerance
  (float64, tolerance 1e-9 / 1e-11: bound 100 x tolerance).

A gradient not averaged over the replicas, or an adjoint/IFT gradient left out
of the all-reduce, moves the weights by as much as training does (``moved``),
far above both bounds. The two cluster-training tests are marked slow; the
README's program (``test_readme_multi_worker.py``) trains on two workers in
the quick selection too.
"""

import json
import signal

import numpy as np
import pytest

import training_cases
import worker_cluster

TOLERANCES = {
    "continuous_flow_exact_trace": training_cases.EXACT_TOLERANCE,
    "latent_ode_without_noise": training_cases.EXACT_TOLERANCE,
    "node_backprop_dopri5": 100 * 1e-9,
    "deq_implicit": 100 * 1e-11,
}


def load_weights(path):
    with np.load(path) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


@pytest.mark.slow  # ~40 s of CPU over three processes (tracing four models twice)
def test_two_workers_reach_the_weights_of_one_process(tmp_path):
    names = list(TOLERANCES)
    workers = worker_cluster.start_workers(["--out", str(tmp_path), "--cases", ",".join(names)],
                                           tmp_path)
    try:
        references = {name: training_cases.train_one_process(name) for name in names}
        finished = worker_cluster.wait(workers, worker_cluster.DEFAULT_TIMEOUT)
    finally:
        worker_cluster.kill(workers)
    assert finished and all(w.returncode == 0 for w in workers), worker_cluster.report(workers)
    failures = []
    for name in names:
        initial, reference = references[name]
        moved = training_cases.relative_difference(initial, reference)
        assert moved > 1e3 * TOLERANCES[name], (name, moved)
        for task in (0, 1):
            difference = training_cases.relative_difference(
                load_weights(tmp_path / f"{name}.{task}.npz"), reference)
            if not difference <= TOLERANCES[name]:
                failures.append(f"{name}, worker {task}: {difference:.3g} relative "
                                f"(bound {TOLERANCES[name]:.0e}; training moved {moved:.3g})")
        logs = json.loads((tmp_path / f"{name}.0.json").read_text())
        assert logs["epochs"] == list(range(training_cases.EPOCHS)), (name, logs)
        assert any(key.endswith(("nfe_forward", "iterations_forward")) for key in logs["history"])
    assert not failures, "\n".join(failures)


@pytest.mark.slow  # two clusters, and the survivor waits for the dead peer's heartbeats
def test_a_killed_worker_is_resumed_from_the_last_finished_epoch(tmp_path):
    """Worker 1 SIGKILLs itself after the first step of epoch 2 of 4 (epochs 0 and 1 saved).

    Worker 0 must then fail by itself (the coordination service misses worker
    1's heartbeats); a restarted cluster must train epochs 2 and 3 only and
    end with the weights of one process trained for 4 epochs without a stop.
    """
    name, epochs = "node_adjoint_rk4", 4
    checkpoint_dir = tmp_path / "checkpoints"
    args = ["--out", str(tmp_path), "--cases", name, "--epochs", str(epochs),
            "--checkpoint-dir", str(checkpoint_dir)]
    workers = worker_cluster.start_workers(args + ["--kill-at", "2,0"], tmp_path)
    try:
        _, reference = training_cases.train_one_process(name, epochs=epochs)
        stopped = worker_cluster.wait(workers, worker_cluster.DEFAULT_TIMEOUT)
    finally:
        worker_cluster.kill(workers)
    log = worker_cluster.report(workers)
    assert stopped, log
    assert workers[1].returncode == -signal.SIGKILL, log
    assert workers[0].returncode != 0, log
    assert "another worker is unreachable" in workers[0].log(20_000), log
    assert "Restart every worker with the same command" in workers[0].log(20_000), log
    assert not (tmp_path / f"{name}.0.npz").exists()

    worker_cluster.run_cluster(args, tmp_path)
    for task in (0, 1):
        logs = json.loads((tmp_path / f"{name}.{task}.json").read_text())
        assert logs["epochs"] == [2, 3], logs
        difference = training_cases.relative_difference(
            load_weights(tmp_path / f"{name}.{task}.npz"), reference)
        assert difference <= training_cases.EXACT_TOLERANCE, (task, difference)


def test_a_worker_whose_peer_never_starts_fails_within_its_timeout(tmp_path):
    """Worker 0 (which hosts the coordination service) and worker 1, each alone in its cluster."""
    workers = []
    try:
        for index in (0, 1):
            workers += worker_cluster.start_workers(
                ["--out", str(tmp_path), "--cases", "node_adjoint_rk4", "--timeout-seconds", "3"],
                tmp_path, indices=[index])
        finished = worker_cluster.wait(workers, 120)
    finally:
        worker_cluster.kill(workers)
    log = worker_cluster.report(workers)
    assert finished, f"A worker without its peer did not stop by itself:\n{log}"
    for index, worker in enumerate(workers):
        assert worker.returncode == 1, log
        assert "TimeoutError: Worker worker:%d could not reach all the workers" % index \
            in worker.log(), log
        assert "timeout_seconds=3.0" in worker.log(), log
