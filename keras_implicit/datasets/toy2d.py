"""The 2-D toy densities of the FFJORD paper, generated with NumPy (no download).

Follows ``lib/toy_data.py`` of the FFJORD code (Grathwohl et al. 2019), with
scikit-learn's ``make_moons``/``make_circles`` rewritten in NumPy and every
sampler drawing exactly ``n`` points from one seeded generator.
"""

import numpy as np

from keras_implicit import validation

EIGHT_GAUSSIANS_SCALE = 4.0 / 1.414  # centre radius of "8gaussians"
EIGHT_GAUSSIANS_STD = 0.5 / 1.414  # per-coordinate standard deviation of each component


def eight_gaussians_centers():
    """The 8 component means of ``"8gaussians"`` (equal weights, isotropic std above)."""
    s = 1.0 / np.sqrt(2.0)
    unit = np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)])
    return unit * EIGHT_GAUSSIANS_SCALE


def _moons(n, rng):
    n_out = n // 2
    n_in = n - n_out
    outer = np.linspace(0, np.pi, n_out)
    inner = np.linspace(0, np.pi, n_in)
    x = np.concatenate([np.stack([np.cos(outer), np.sin(outer)], 1),
                        np.stack([1 - np.cos(inner), 1 - np.sin(inner) - 0.5], 1)])
    x = rng.permutation(x) + rng.normal(scale=0.1, size=(n, 2))
    return x * 2 + np.array([-1, -0.2])


def _eight_gaussians(n, rng):
    centers = eight_gaussians_centers()
    return centers[rng.integers(0, 8, size=n)] + rng.normal(size=(n, 2)) * EIGHT_GAUSSIANS_STD


def _pinwheel(n, rng):
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
    rads = np.linspace(0, 2 * np.pi, num_classes, endpoint=False)
    features = rng.normal(size=(n, 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    labels = np.arange(n) % num_classes
    angles = rads[labels] + rate * np.exp(features[:, 0])
    rotations = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)])
    rotations = np.reshape(rotations.T, (-1, 2, 2))
    return 2 * rng.permutation(np.einsum("ti,tij->tj", features, rotations))


def _checkerboard(n, rng):
    x1 = rng.uniform(size=n) * 4 - 2
    x2 = rng.uniform(size=n) - rng.integers(0, 2, size=n) * 2 + (np.floor(x1) % 2)
    return np.stack([x1, x2], 1) * 2


def _rings(n, rng):
    sizes = [n // 4] * 3
    sizes = [n - sum(sizes)] + sizes  # radii 0.25 (the remainder), 0.5, 0.75, 1
    points = []
    for radius, size in zip((0.25, 0.5, 0.75, 1.0), sizes):
        angle = np.linspace(0, 2 * np.pi, size, endpoint=False)
        points.append(np.stack([np.cos(angle), np.sin(angle)], 1) * radius)
    x = rng.permutation(np.concatenate(points) * 3.0)
    return x + rng.normal(scale=0.08, size=x.shape)


def _two_spirals(n, rng):
    half = n // 2
    turns = np.sqrt(rng.uniform(size=(n - half, 1))) * 540 * (2 * np.pi) / 360
    arm = np.hstack([-np.cos(turns) * turns + rng.uniform(size=(n - half, 1)) * 0.5,
                     np.sin(turns) * turns + rng.uniform(size=(n - half, 1)) * 0.5])
    x = np.vstack([arm, -arm[:half]]) / 3
    return rng.permutation(x + rng.normal(size=x.shape) * 0.1)


def _circles(n, rng):
    n_out = n // 2
    n_in = n - n_out
    outer = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
    inner = np.linspace(0, 2 * np.pi, n_in, endpoint=False)
    x = np.concatenate([np.stack([np.cos(outer), np.sin(outer)], 1),
                        np.stack([np.cos(inner), np.sin(inner)], 1) * 0.5])
    return (rng.permutation(x) + rng.normal(scale=0.08, size=(n, 2))) * 3


_GENERATORS = {
    "moons": _moons,
    "8gaussians": _eight_gaussians,
    "pinwheel": _pinwheel,
    "checkerboard": _checkerboard,
    "rings": _rings,
    "2spirals": _two_spirals,
    "circles": _circles,
}
NAMES = tuple(_GENERATORS)


def toy2d(name, n, seed=None):
    """``n`` samples of a 2-D toy density of the FFJORD paper.

    Args:
        name: one of ``"moons"``, ``"8gaussians"``, ``"pinwheel"``,
            ``"checkerboard"``, ``"rings"``, ``"2spirals"``, ``"circles"``.
        n: number of points, an int >= 1.
        seed: seed of the NumPy generator (``None``: fresh entropy).

    Returns:
        A float32 array of shape ``(n, 2)``.

    Raises:
        ValueError: unknown ``name`` (the message lists the names) or bad ``n``.

    Example:
        >>> x = ki.datasets.toy2d("pinwheel", 1000, seed=0)
        >>> x.shape
        (1000, 2)
    """
    validation.known_name("toy density", "name", name, NAMES)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"`n` must be an int >= 1. Received: n={n!r}")
    rng = np.random.default_rng(seed)
    return _GENERATORS[name](int(n), rng).astype(np.float32)
