"""Writing the MNIST table: CSV, Markdown next to the paper's numbers, and a figure."""

import csv

from keras_implicit import files
from keras_implicit.applications.odenet_mnist import PAPER_TABLE1

NAMES = {"mlp": "1-Layer MLP", "resnet": "ResNet", "rknet": "RK-Net", "odenet": "ODE-Net"}
COLORS = {"mlp": "#7f7f7f", "resnet": "#1f77b4", "rknet": "#ff7f0e", "odenet": "#2ca02c"}
COLUMNS = ["model", "epochs", "test_error_pct", "test_images", "params", "peak_memory_mb",
           "block_memory_mb", "block_memory_x4_mb", "block_memory_growth", "block_scaled",
           "time_per_step_ms", "measured_steps", "nfe_forward", "nfe_backward", "gradient",
           "train_seconds"]


def write_csv(rows, path):
    with files.atomic_write(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in COLUMNS})


def _show(value):
    return "-" if value in ("", None) else str(value)


def _block(row):
    if row.get("block_memory_mb") in ("", None):
        return "-"
    return (f"{row['block_memory_mb']:.1f} MB, x{row['block_memory_growth']:.2f} at "
            f"{row['block_scaled']}")


def _number(value, fmt):
    return "-" if value in ("", None) else format(value, fmt)


def markdown(rows, settings):
    """The table as Markdown: measured columns, then the paper's."""
    lines = [
        "| Model | Epochs | Test error | Params | Peak memory / step | Block memory (growth at "
        "4x) | Time / step | NFE fwd | NFE bwd | Paper: error | Paper: params | Paper: memory |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        paper = PAPER_TABLE1[row["model"]]
        lines.append(
            f"| {NAMES[row['model']]} ({row['gradient']}) | {row['epochs']} "
            f"| {row['test_error_pct']:.2f}% | {row['params'] / 1e6:.3f}M "
            f"| {_number(row['peak_memory_mb'], '.1f')} MB | {_block(row)} "
            f"| {_number(row['time_per_step_ms'], '.0f')} ms | {_show(row['nfe_forward'])} "
            f"| {_show(row['nfe_backward'])} | {paper['test_error']:.2f}% "
            f"| {paper['params_m']:.2f}M | {paper['memory']} |")
    xla = {True: "; ODE dynamics compiled by XLA (jit_dynamics=True)",
           False: "; ODE dynamics not compiled (jit_dynamics=False)",
           "auto": "; jit_dynamics='auto' (XLA compiles the convolutional ODE dynamics alone)",
           }.get(settings.get("jit_dynamics"), "")
    hours = sum(row.get("train_seconds") or 0 for row in rows) / 3600
    notes = [
        "",
        f"Budget: recipe {settings['recipe']!r}: {settings['training']}; "
        f"{settings['train_size']} training images, batch {settings['batch_size']}, "
        f"seed {settings['seed']}{xla}; test error on {settings['test_size']} test images after "
        f"the epochs shown; {settings['device']}, TensorFlow {settings['tensorflow']}; "
        f"training and evaluation {hours:.2f} h in all (summed over resumed sessions); "
        f"this session {settings['wall_seconds']:.0f} s of wall time so far.",
        f"Peak memory: {settings['memory_description']}; the largest over the training "
        f"steps of `fit` (batch {settings['batch_size']}) but the first of each epoch. Block "
        "memory: the same for the residual/ODE part alone (no stem, no head), and its growth "
        "when the blocks, the RK4 steps or the integration interval are multiplied by 4. "
        "Time: the median step. NFE: dynamics evaluations of the forward solve and of the "
        "adjoint (backward) solve in the last training step; '-' where no ODE is solved "
        "backwards (backprop differentiates each forward evaluation once instead).",
        "Paper: Chen et al. 2018, Table 1 (160 epochs on all 60000 images, SGD, "
        "augmentation); its memory column is asymptotic in the depth L or the number of "
        "evaluations L~.",
    ]
    return "\n".join(lines + notes) + "\n"


def plot(rows, settings, path):
    """Bar charts: test error, peak memory of a step, block memory at 1x and 4x, step time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [NAMES[row["model"]] for row in rows]
    colors = [COLORS[row["model"]] for row in rows]
    figure, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    panels = [("test_error_pct", "test error (%)", "Test error"),
              ("peak_memory_mb", "MB", "Peak memory of a training step"),
              (None, "MB", "Block memory alone: 1x and 4x"),
              ("time_per_step_ms", "ms", "Time per training step")]
    for axis, (key, unit, title) in zip(axes, panels):
        if key is None:
            block = [row for row in rows if row.get("block_memory_mb") not in ("", None)]
            where = np.arange(len(block))
            for offset, column, alpha in ((-0.2, "block_memory_mb", 1.0),
                                          (0.2, "block_memory_x4_mb", 0.5)):
                values = [row[column] for row in block]
                bars = axis.bar(where + offset, values, 0.4, alpha=alpha,
                                color=[COLORS[row["model"]] for row in block])
                axis.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=8)
            axis.set_xticks(where, [f"{NAMES[r['model']]}\nx{r['block_memory_growth']:.2f}"
                                    for r in block])
        else:
            values = [0 if row[key] in ("", None) else row[key] for row in rows]
            bars = axis.bar(labels, values, color=colors)
            axis.bar_label(bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
                                         for v in values])
            axis.tick_params(axis="x", labelrotation=20)
        axis.set_title(title)
        axis.set_ylabel(unit)
    where = "GPU allocator" if settings["memory_method"] == "gpu" else "host"
    epochs = sorted({row["epochs"] for row in rows})
    figure.suptitle(
        f"MNIST, recipe {settings['recipe']}, {settings['train_size']} training images x "
        f"{'/'.join(map(str, epochs))} epoch(s), batch {settings['batch_size']}; memory: {where}"
        "; block memory: light bars at 4x depth / steps / interval")
    figure.tight_layout()
    with files.atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    plt.close(figure)


def write_all(rows, settings, out):
    """Writes table1.csv, table1.md and table1.png to ``out`` (atomically); returns their paths."""
    import os

    paths = [os.path.join(out, name) for name in ("table1.csv", "table1.md", "table1.png")]
    write_csv(rows, paths[0])
    with files.atomic_write(paths[1]) as handle:
        handle.write("# MNIST: Table 1 of Chen et al. 2018, reproduced\n\n")
        handle.write(markdown(rows, settings))
    plot(rows, settings, paths[2])
    return paths
