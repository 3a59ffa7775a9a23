"""The spirals of the Neural ODE paper (Chen et al. 2018, Sec. 5.1), irregularly subsampled."""

import numpy as np

_STOP = 6.0 * np.pi  # the curves' parameter runs over [0, 6 pi], as in the paper's code


def spiral_positions(u, clockwise, a=0.0, b=0.3):
    """Points of the paper's two spirals at curve parameter ``u`` (radians, in ``[0, 6 pi]``).

    Counter-clockwise: the Archimedean spiral ``r = a + b u`` centred at
    ``(5, 0)``. Clockwise: ``r = a + 50 b / z`` with ``z = 6 pi + 1 - u``,
    centred at ``(-5, 0)``. Both wind outwards as ``u`` grows.

    Args:
        u: array of curve parameters.
        clockwise: bool array broadcastable to ``u``.
        a, b: the spirals' shape parameters.

    Returns:
        ``u.shape + (2,)`` positions.
    """
    u = np.asarray(u, dtype=np.float64)
    clockwise = np.broadcast_to(np.asarray(clockwise, dtype=bool), u.shape)
    z = _STOP + 1.0 - u
    r_cw = a + 50.0 * b / z
    cw = np.stack([r_cw * np.cos(z) - 5.0, r_cw * np.sin(z)], axis=-1)
    r_cc = a + b * u
    cc = np.stack([r_cc * np.cos(u) + 5.0, r_cc * np.sin(u)], axis=-1)
    return np.where(clockwise[..., None], cw, cc)


def spirals(n=1000, num_points=100, noise=0.1, seed=0, *, t_max=4.0, observed_fraction=0.5,
            min_observations=None, max_observations=None, a=0.0, b=0.3, dtype="float32"):
    """Clockwise and counter-clockwise 2-D spirals, irregularly subsampled with noise.

    Each sample is a stretch of one of the paper's two spirals (chosen with
    probability 1/2) starting at a random point, followed for ``t_max`` time
    units (one radian of curve parameter per unit). Its observations are a
    random subset, of random size, of a regular grid of ``num_points`` times
    on ``[0, t_max]``, restricted to ``[0, observed_fraction * t_max]``, with
    Gaussian noise: samples differ in their times and their number of
    observations. The rest of the grid is there to score interpolation and
    extrapolation against the true, noise-free, trajectories.

    Args:
        n: number of samples.
        num_points: size of the time grid on ``[0, t_max]``, >= 2.
        noise: standard deviation of the observation noise, >= 0.
        seed: NumPy seed.
        t_max: length in time of each sample's trajectory, > 0.
        observed_fraction: the observations lie in ``[0, observed_fraction *
            t_max]``, in (0, 1].
        min_observations, max_observations: bounds of a sample's number of
            observations (both included), ``1 <= min <= max <=`` the grid
            points in the observed window (``W``); default ``W // 5`` and
            ``3 W // 5`` (10 and 30 with the defaults, W = 50).
        a, b: the spirals' shape parameters (the paper's ``a=0, b=0.3``).
        dtype: floating dtype of the returned arrays.

    Returns:
        A dict of NumPy arrays:

        - ``"observations"``: ``(n, max_observations, 2)`` noisy positions,
          zero after a sample's last observation.
        - ``"times"``: ``(n, max_observations)`` their times, strictly
          increasing, padded with the sample's last observed time.
        - ``"mask"``: ``(n, max_observations)``, 1 for observed entries (a
          prefix of each row), 0 for padding.
        - ``"trajectory_times"``: ``(num_points,)`` the grid on ``[0, t_max]``.
        - ``"trajectories"``: ``(n, num_points, 2)`` the true positions on the grid.
        - ``"clockwise"``: ``(n,)`` bool, the direction of each spiral.
        - ``"observed_until"``: float, the end of the observation window.

        ``{k: data[k] for k in ("observations", "times", "mask")}`` is the
        input of ``ki.models.LatentODE``.

    Example:
        >>> data = ki.datasets.spirals(n=500, noise=0.1, seed=0)
        >>> data["observations"].shape, data["trajectories"].shape
        ((500, 30, 2), (500, 100, 2))

    Reference:
        Chen, Rubanova, Bettencourt & Duvenaud 2018, Neural Ordinary
        Differential Equations, Sec. 5.1 and Fig. 8.
    """
    for label, value, low in (("n", n, 1), ("num_points", num_points, 2),
                              ("min_observations", min_observations, 1),
                              ("max_observations", max_observations, 1)):
        if value is None and label.endswith("observations"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"`{label}` must be an int >= {low}. Received: {label}={value!r}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"`noise` must be a finite number >= 0. Received: noise={noise!r}")
    if not np.isfinite(t_max) or t_max <= 0 or t_max > 0.8 * _STOP:
        raise ValueError(
            f"`t_max` must be in (0, {0.8 * _STOP:.4g}] (the spirals' length). "
            f"Received: t_max={t_max!r}")
    if not 0 < observed_fraction <= 1:
        raise ValueError(f"`observed_fraction` must be in (0, 1]. "
                         f"Received: observed_fraction={observed_fraction!r}")
    grid = np.linspace(0.0, t_max, num_points)
    observed_until = observed_fraction * t_max
    window = int(np.sum(grid <= observed_until + 1e-12 * t_max))
    if min_observations is None:
        min_observations = max(1, window // 5)
    if max_observations is None:
        max_observations = max(min_observations, 3 * window // 5)
    if not min_observations <= max_observations <= window:
        raise ValueError(
            f"Need min_observations <= max_observations <= {window} (the grid points in the "
            f"observed window [0, {observed_until:.4g}]). Received: min_observations="
            f"{min_observations}, max_observations={max_observations}")

    rng = np.random.default_rng(seed)
    clockwise = rng.random(n) < 0.5
    start = rng.uniform(0.1 * _STOP, 0.9 * _STOP - t_max, size=n)
    trajectories = spiral_positions(start[:, None] + grid[None, :], clockwise[:, None], a, b)

    counts = rng.integers(min_observations, max_observations + 1, size=n)
    observations = np.zeros((n, max_observations, 2))
    times = np.zeros((n, max_observations))
    mask = np.zeros((n, max_observations))
    for i in range(n):
        chosen = np.sort(rng.choice(window, size=counts[i], replace=False))
        k = counts[i]
        times[i, :k] = grid[chosen]
        times[i, k:] = grid[chosen[-1]]
        observations[i, :k] = trajectories[i, chosen] + noise * rng.standard_normal((k, 2))
        mask[i, :k] = 1.0
    return {
        "observations": observations.astype(dtype),
        "times": times.astype(dtype),
        "mask": mask.astype(dtype),
        "trajectory_times": grid.astype(dtype),
        "trajectories": trajectories.astype(dtype),
        "clockwise": clockwise,
        "observed_until": float(observed_until),
    }
