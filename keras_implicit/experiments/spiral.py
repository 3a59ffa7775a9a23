"""``keras-implicit spiral``: a latent ODE on irregular spirals (Chen et al. 2018, Sec. 5.1).

Trains ``ki.models.LatentODE`` on ``ki.datasets.spirals``, then on held-out
spirals measures how well it reconstructs the observed window and
extrapolates past it, against two baselines that know no dynamics (extend the
last observed velocity; keep the last observed position). Writes to ``--out``:

- ``reconstruction.png``: observed points, the true trajectory, the model's
  reconstruction and extrapolation, posterior samples, the velocity baseline
  (like the paper's Fig. 8);
- ``latent_traversal.png``: one row per latent dimension, varying it with the
  others at 0, decoded and coloured by time (like Fig. 9);
- ``training.png``: negative ELBO, reconstruction and KL per step;
- ``metrics.json``: the settings, training losses, the test negative ELBO
  before and after training, and the RMSE of interpolation and extrapolation.
"""

import json
import math
import os
import time

from keras_implicit import files
from keras_implicit.experiments import arguments


RESULT_NAMES = ("reconstruction.png", "latent_traversal.png", "training.png", "metrics.json")


def add_arguments(parser):
    parser.add_argument("--steps", type=arguments.positive_int, default=2000,
                        help="training steps (default 2000)")
    parser.add_argument("--out", default="spiral_out", help="output directory")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace earlier results of spiral in --out made with other "
                             "settings")
    parser.add_argument("--train-size", type=arguments.int_in_range(1, 1_000_000),
                        default=1000, help="training spirals")
    parser.add_argument("--test-size", type=arguments.int_in_range(1, 100_000), default=100,
                        help="held-out spirals")
    parser.add_argument("--batch-size", type=arguments.positive_int, default=64)
    parser.add_argument("--num-points", type=arguments.int_in_range(2, 100_000), default=100,
                        help="time grid size")
    parser.add_argument("--noise", type=arguments.nonnegative_float, default=0.1,
                        help="observation noise std")
    parser.add_argument("--latent-dim", type=arguments.int_in_range(1, 10_000), default=4)
    parser.add_argument("--hidden-units", type=arguments.int_in_range(1, 100_000), default=32)
    parser.add_argument("--encoder", choices=("gru", "ode_rnn"), default="gru")
    parser.add_argument("--solver", default="dopri5")
    parser.add_argument("--gradient", choices=("adjoint", "backprop"), default="backprop")
    parser.add_argument("--learning-rate", type=arguments.positive_float, default=1e-2)
    parser.add_argument("--observation-std", type=arguments.positive_float, default=0.1)
    parser.add_argument("--seed", type=arguments.seed, default=0)


def _model(args):
    import keras_implicit as ki

    return ki.models.LatentODE(
        obs_dim=2, latent_dim=args.latent_dim, hidden_units=args.hidden_units,
        encoder=args.encoder, solver=args.solver, gradient=args.gradient,
        observation_std=args.observation_std, seed=args.seed)


def validate(args):
    """Checks every argument and ``--out`` without creating anything.

    Raises:
        arguments.UsageError: with a one-line message.
    """
    arguments.check_solver("--solver", args.solver)
    arguments.check_run(args, "spiral", _model, RESULT_NAMES)


def last_velocity_extrapolation(observations, times, mask, query_times):
    """Baseline: continue from the last observation at the velocity between the last two.

    Args:
        observations, times, mask: ``(n, T, d)``, ``(n, T)``, ``(n, T)`` NumPy
            arrays, observed entries a prefix of each row (as ``spirals`` returns).
        query_times: ``(G,)``.

    Returns:
        ``(n, G, d)``; a sample with one observation stays where it is.
    """
    import numpy as np

    counts = mask.sum(axis=1).astype(int)
    rows = np.arange(len(counts))
    last = observations[rows, counts - 1]
    before = observations[rows, np.maximum(counts - 2, 0)]
    gap = times[rows, counts - 1] - times[rows, np.maximum(counts - 2, 0)]
    velocity = np.where(gap[:, None] > 0, (last - before) / np.where(gap > 0, gap, 1)[:, None], 0)
    elapsed = query_times[None, :] - times[rows, counts - 1][:, None]
    return last[:, None, :] + velocity[:, None, :] * elapsed[..., None]


def _rmse(a, b):
    import numpy as np

    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def run(args):
    """Trains and writes the results; call ``validate`` first."""
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_implicit as ki

    args.run_directory.prepare(args.overwrite)
    keras.utils.set_random_seed(args.seed)
    keys = ("observations", "times", "mask")
    train = ki.datasets.spirals(args.train_size, args.num_points, args.noise, seed=args.seed)
    test = ki.datasets.spirals(args.test_size, args.num_points, args.noise, seed=args.seed + 1)
    x_train = {k: train[k] for k in keys}
    x_test = {k: test[k] for k in keys}

    model = _model(args)
    model.compile(keras.optimizers.Adam(args.learning_rate))
    elbo_before = model.evaluate(x_test, batch_size=args.test_size, verbose=0, return_dict=True)

    rng = np.random.default_rng(args.seed)
    batch = min(args.batch_size, args.train_size)
    names = ("loss", "reconstruction", "kl")
    history = {name: [] for name in names}
    progress = keras.utils.Progbar(args.steps, stateful_metrics=names)
    start = time.time()
    for step in range(args.steps):
        index = rng.choice(args.train_size, size=batch, replace=False)
        logs = model.train_on_batch({k: v[index] for k, v in x_train.items()}, return_dict=True)
        for name in names:
            history[name].append(float(logs[name]))
        progress.update(step + 1, [(name, history[name][-1]) for name in names])
    seconds = time.time() - start
    elbo_after = model.evaluate(x_test, batch_size=args.test_size, verbose=0, return_dict=True)

    grid = test["trajectory_times"]
    split = grid > test["observed_until"]
    predicted = np.asarray(model.predict_trajectories(x_test, grid))
    baseline = last_velocity_extrapolation(test["observations"], test["times"], test["mask"], grid)
    counts = test["mask"].sum(axis=1).astype(int)
    last_value = test["observations"][np.arange(args.test_size), counts - 1][:, None, :]
    truth = test["trajectories"]
    window = max(1, min(50, args.steps // 2))
    metrics = {
        "settings": args.run_directory.settings,
        "training_seconds": seconds,
        "train": {
            "loss_first": float(np.mean(history["loss"][:window])),
            "loss_last": float(np.mean(history["loss"][-window:])),
            "reconstruction_last": float(np.mean(history["reconstruction"][-window:])),
            "kl_last": float(np.mean(history["kl"][-window:])),
            "averaged_over_steps": window,
        },
        "test_negative_elbo": {"before": float(elbo_before["loss"]),
                               "after": float(elbo_after["loss"])},
        "interpolation_rmse": {"model": _rmse(predicted[:, ~split], truth[:, ~split])},
        "extrapolation_rmse": {
            "model": _rmse(predicted[:, split], truth[:, split]),
            "last_velocity": _rmse(baseline[:, split], truth[:, split]),
            "last_value": _rmse(np.broadcast_to(last_value, truth.shape)[:, split],
                                truth[:, split]),
        },
    }
    with files.atomic_write(os.path.join(args.out, "metrics.json")) as handle:
        json.dump(metrics, handle, indent=2)

    samples = np.asarray(model.sample_trajectories(x_test, grid, num_samples=3))
    _plot_reconstructions(args.out, test, predicted, samples, baseline)
    _plot_traversal(args.out, model, grid, tf)
    _plot_training(args.out, history)
    shown = ("test_negative_elbo", "interpolation_rmse", "extrapolation_rmse")
    print(json.dumps({k: metrics[k] for k in shown}, indent=2))
    return 0


def _save(figure, path):
    with files.atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    _figure().close(figure)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_reconstructions(out, test, predicted, samples, baseline, count=6):
    import numpy as np

    plt = _figure()
    grid = test["trajectory_times"]
    inside = grid <= test["observed_until"]
    count = min(count, len(predicted))
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= count:
            ax.axis("off")
            continue
        observed = test["mask"][i] > 0
        ax.plot(*test["trajectories"][i].T, color="0.6", lw=3, label="true trajectory")
        for s in range(samples.shape[0]):
            ax.plot(*samples[s, i].T, color="tab:purple", lw=0.7, alpha=0.6,
                    label="posterior samples" if s == 0 else None)
        ax.plot(*predicted[i, inside].T, color="tab:blue", lw=2, label="reconstruction")
        ax.plot(*predicted[i, ~inside].T, color="tab:red", lw=2, label="extrapolation")
        ax.plot(*baseline[i, ~inside].T, color="tab:green", ls="--", lw=1,
                label="last-velocity baseline")
        ax.scatter(*test["observations"][i, observed].T, s=12, color="k", zorder=3,
                   label="observations")
        true = test["trajectories"][i]
        span = np.ptp(true, axis=0).max()
        centre = (true.min(axis=0) + true.max(axis=0)) / 2
        ax.set_xlim(centre[0] - 0.8 * span, centre[0] + 0.8 * span)
        ax.set_ylim(centre[1] - 0.8 * span, centre[1] + 0.8 * span)
        ax.set_title(f"test spiral {i} ({int(np.sum(observed))} observations, "
                     f"{'cw' if test['clockwise'][i] else 'ccw'})", fontsize=9)
        ax.set_aspect("equal", adjustable="box")
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, os.path.join(out, "reconstruction.png"))


def _plot_traversal(out, model, grid, tf, values=(-2.0, -1.0, 0.0, 1.0, 2.0)):
    import numpy as np

    plt = _figure()
    latent = model.latent_dim
    z0 = np.zeros((latent, len(values), latent))
    for d in range(latent):
        z0[d, :, d] = values
    times = np.broadcast_to(grid, (latent * len(values), len(grid)))
    decode = tf.function(model.decode)
    paths = np.asarray(decode(tf.constant(z0.reshape(-1, latent), model.compute_dtype),
                              tf.constant(times, model.compute_dtype)))
    paths = paths.reshape(latent, len(values), len(grid), -1)
    fig, axes = plt.subplots(latent, len(values), figsize=(2.2 * len(values), 2.2 * latent),
                             squeeze=False, sharex=True, sharey=True)
    for d in range(latent):
        for j, value in enumerate(values):
            ax = axes[d, j]
            points = ax.scatter(paths[d, j, :, 0], paths[d, j, :, 1], c=grid, s=4,
                                cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"z[{d}]")
            if d == 0:
                ax.set_title(f"{value:+.1f}", fontsize=9)
    fig.colorbar(points, ax=axes, label="time", shrink=0.6)
    fig.suptitle("latent traversal: vary one dimension of z_t0 (others 0), decode")
    _save(fig, os.path.join(out, "latent_traversal.png"))


def _plot_training(out, history):
    plt = _figure()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, name in zip(axes, ("loss", "reconstruction", "kl")):
        ax.plot(history[name])
        ax.set_title({"loss": "negative ELBO", "reconstruction": "reconstruction NLL",
                      "kl": "KL(q(z_t0|x) || N(0, I))"}[name])
        ax.set_xlabel("step")
        if name != "kl" and min(history[name]) > 0:
            ax.set_yscale("log")
    fig.tight_layout()
    _save(fig, os.path.join(out, "training.png"))
