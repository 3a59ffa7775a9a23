"""Writing the MNIST table: CSV, Markdown next to the paper's numbers, and a figure."""

import csv
import os

from keras_implicit.applications.odenet_mnist import PAPER_TABLE1

NAMES = {"mlp": "1-Layer MLP", "resnet": "ResNet", "rknet": "RK-Net", "odenet": "ODE-Net"}
COLORS = {"mlp": "#7f7f7f", "resnet": "#1f77b4", "rknet": "#ff7f0e", "odenet": "#2ca02c"}
COLUMNS = ["model", "test_error_pct", "test_images", "params", "peak_memory_mb",
           "time_per_step_ms", "measured_steps", "nfe_forward", "nfe_backward", "gradient", "fit_seconds"]


def write_csv(rows, path):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row[key] for key in COLUMNS})


def _show(value):
    return "-" if value in ("", None) else str(value)


def markdown(rows, settings):
    """The table as Markdown: measured columns, then the paper's."""
    lines = [
        "| Model | Test error | Params | Peak memory / step | Time / step | NFE fwd | NFE bwd "
        "| Paper: error | Paper: params | Paper: memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        paper = PAPER_TABLE1[row["model"]]
        lines.append(
            f"| {NAMES[row['model']]} ({row['gradient']}) | {row['test_error_pct']:.2f}% "
            f"| {row['params'] / 1e6:.3f}M | {row['peak_memory_mb']:.1f} MB "
            f"| {row['time_per_step_ms']:.0f} ms | {_show(row['nfe_forward'])} "
            f"| {_show(row['nfe_backward'])} | {paper['test_error']:.2f}% "
            f"| {paper['params_m']:.2f}M | {paper['memory']} |")
    xla = "; ODE dynamics compiled by XLA" if settings.get("jit_dynamics") else ""
    notes = [
        "",
        f"Budget: {settings['train_size']} training images, {settings['epochs']} epoch(s), "
        f"batch {settings['batch_size']}, Adam lr {settings['learning_rate']}, seed "
        f"{settings['seed']}{xla}; test error on {settings['test_size']} test images; "
        f"{settings['device']}, TensorFlow {settings['tensorflow']}; wall time "
        f"{settings['wall_seconds']:.0f} s.",
        f"Peak memory: {settings['memory_description']}; the largest over the training "
        f"steps of `fit` (batch {settings['batch_size']}) but the first, which traces, and "
        "partial batches. Time: their median. NFE: dynamics evaluations of the forward solve "
        "and of the adjoint (backward) solve in the last training step; '-' where no ODE is "
        "solved backwards (backprop differentiates each forward evaluation once instead).",
        "Paper: Chen et al. 2018, Table 1 (160 epochs on all 60000 images, SGD, "
        "augmentation); its memory column is asymptotic in the depth L or the number of "
        "evaluations L~.",
    ]
    return "\n".join(lines + notes) + "\n"


def plot(rows, settings, path):
    """Bar charts: test error, peak memory and time per training step per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [NAMES[row["model"]] for row in rows]
    panels = [
        ("test_error_pct", "test error (%)", "Test error"),
        ("peak_memory_mb", "MB", "Peak memory of a training step"),
        ("time_per_step_ms", "ms", "Time per training step"),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    for axis, (key, unit, title) in zip(axes, panels):
        values = [row[key] for row in rows]
        bars = axis.bar(labels, values, color=[COLORS[row["model"]] for row in rows])
        axis.bar_label(bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values])
        axis.set_title(title)
        axis.set_ylabel(unit)
        axis.tick_params(axis="x", labelrotation=20)
    where = "GPU allocator" if settings["memory_method"] == "gpu" else "host"
    figure.suptitle(
        f"MNIST, {settings['train_size']} training images x {settings['epochs']} epoch(s), "
        f"batch {settings['batch_size']}; memory: {where}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_all(rows, settings, out):
    """Writes table1.csv, table1.md and table1.png to ``out``; returns their paths."""
    paths = [os.path.join(out, name) for name in ("table1.csv", "table1.md", "table1.png")]
    write_csv(rows, paths[0])
    with open(paths[1], "w") as handle:
        handle.write("# MNIST: Table 1 of Chen et al. 2018, reproduced\n\n")
        handle.write(markdown(rows, settings))
    plot(rows, settings, paths[2])
    return paths
