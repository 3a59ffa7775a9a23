"""The README's "Training on several machines": its program, run as written on two workers."""

import json
import pathlib
import re

import worker_cluster

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def section():
    return README.read_text().split("## Training on several machines", 1)[1].split("\n## ")[0]


def test_the_commands_describe_one_two_machine_cluster():
    text = section()
    configs = [json.loads(c) for c in re.findall(r"TF_CONFIG='(.*?)'", text)]
    assert len(configs) == 2
    assert configs[0]["cluster"] == configs[1]["cluster"]
    assert len(configs[0]["cluster"]["worker"]) == 2
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in (0, 1)]
    commands = re.findall(r"^\s+(python train\.py .*)$", text, re.M)
    assert len(commands) == 2 and commands[0] == commands[1]


def test_the_program_trains_on_two_workers_and_the_chief_saves(tmp_path):
    code = re.search(r"```python\n(.*?)```", section(), re.S).group(1)
    script = tmp_path / "train.py"
    script.write_text(code)
    run = tmp_path / "run1"
    worker_cluster.run_cluster([str(run)], tmp_path, script=script, cwd=tmp_path)
    assert (run / "model.keras").exists()
    assert 'model_checkpoint_path: "ckpt-3"' in (run / "checkpoint").read_text()
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint", "ckpt-3.data-00000-of-00001", "ckpt-3.index", "model.keras"]
