"""The README's quick-start example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text.split("## Quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 16
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "node.keras").exists()
    assert (tmp_path / "node_savedmodel" / "saved_model.pb").exists()


def test_events_control_and_dense_examples_run(capsys):
    """The README's examples of events, a PID controller and dense output, as written."""
    text = README.read_text()
    section = text.split("### Events, step-size control and dense output", 1)[1]
    section = section.split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    namespace = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    import numpy as np

    bounces = [float(v) for v in re.findall(r"[\d.]+", printed[0])]
    first = np.sqrt(2 * 2.0 / 9.81)
    expected = first + np.cumsum([0, 2 * 0.8 * first, 2 * 0.64 * first])
    np.testing.assert_allclose(bounces, expected, rtol=1e-8)
    assert int(printed[1]) == namespace["result"].stats.rejected_steps.numpy()
