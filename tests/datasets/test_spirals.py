"""spirals: the paper's two spirals, irregular subsets of a time grid, documented structure."""

import numpy as np
import pytest

import keras_implicit as ki
from keras_implicit.datasets.spirals import spiral_positions


def test_structure_and_irregular_sampling():
    data = ki.datasets.spirals(200, num_points=50, noise=0.1, seed=3, t_max=3.0,
                               min_observations=4, max_observations=12)
    assert data["observations"].shape == (200, 12, 2)
    assert data["times"].shape == data["mask"].shape == (200, 12)
    assert data["trajectories"].shape == (200, 50, 2)
    np.testing.assert_allclose(data["trajectory_times"], np.linspace(0, 3, 50), rtol=1e-6)
    assert data["observations"].dtype == np.float32 and data["observed_until"] == 1.5
    counts = data["mask"].sum(axis=1)
    assert counts.min() >= 4 and counts.max() <= 12 and len(np.unique(counts)) > 5
    for i in range(200):
        k = int(counts[i])
        assert np.all(data["mask"][i, :k] == 1) and np.all(data["mask"][i, k:] == 0)
        times = data["times"][i]
        assert np.all(np.diff(times[:k]) > 0) and np.all(times[k:] == times[k - 1])
        assert times[0] >= 0 and times[k - 1] <= 1.5 + 1e-6
        assert np.all(data["observations"][i, k:] == 0)
    # per-sample different times
    assert len({tuple(t[: int(c)]) for t, c in zip(data["times"], counts)}) == 200
    assert 70 < data["clockwise"].sum() < 130


def test_observations_are_the_trajectory_at_their_times_plus_the_noise():
    exact = ki.datasets.spirals(300, num_points=60, noise=0.0, seed=1, dtype="float64")
    noisy = ki.datasets.spirals(300, num_points=60, noise=0.2, seed=1, dtype="float64")
    dt = exact["trajectory_times"][1]
    errors = []
    for i in range(300):
        k = int(exact["mask"][i].sum())
        index = np.rint(exact["times"][i, :k] / dt).astype(int)
        np.testing.assert_allclose(exact["observations"][i, :k],
                                   exact["trajectories"][i, index], atol=1e-12)
        errors.append(noisy["observations"][i, :k] - exact["trajectories"][i, index])
    errors = np.concatenate(errors)
    assert abs(errors.std() - 0.2) < 0.01 and abs(errors.mean()) < 0.01


def test_directions_and_the_papers_closed_form():
    # Counter-clockwise: r = b u around (5, 0); clockwise: r = 50 b / (6 pi + 1 - u) around (-5, 0).
    u = np.array([np.pi / 2, 3 * np.pi])
    np.testing.assert_allclose(spiral_positions(u, False),
                               [[5.0, 0.3 * np.pi / 2], [5.0 - 0.9 * np.pi, 0.0]], atol=1e-12)
    z = 6 * np.pi + 1 - u
    want = np.stack([15 / z * np.cos(z) - 5, 15 / z * np.sin(z)], axis=-1)
    np.testing.assert_allclose(spiral_positions(u, True), want, atol=1e-12)
    data = ki.datasets.spirals(100, num_points=40, noise=0.0, seed=0, dtype="float64")
    for path, clockwise in zip(data["trajectories"], data["clockwise"]):
        centre = np.array([-5.0, 0.0]) if clockwise else np.array([5.0, 0.0])
        r = path - centre
        turning = r[:-1, 0] * r[1:, 1] - r[:-1, 1] * r[1:, 0]  # cross product: + is ccw
        assert np.all(turning < 0) if clockwise else np.all(turning > 0)
        radius = np.linalg.norm(r, axis=1)
        assert np.all(np.diff(radius) > 0)  # both wind outwards


def test_seeded():
    a, b = ki.datasets.spirals(20, seed=5), ki.datasets.spirals(20, seed=5)
    c = ki.datasets.spirals(20, seed=6)
    assert all(np.array_equal(a[k], b[k]) for k in ("observations", "times", "mask"))
    assert not np.array_equal(a["times"], c["times"])


BAD_ARGUMENTS = [
    (dict(n=0), "n=0"),
    (dict(num_points=1), "num_points=1"),
    (dict(noise=-0.1), "noise=-0.1"),
    (dict(t_max=100.0), "t_max=100.0"),
    (dict(observed_fraction=0.0), "observed_fraction=0.0"),
    (dict(min_observations=8, max_observations=5), "min_observations=8, max_observations=5"),
    (dict(max_observations=80), "max_observations=80"),
]


def test_bad_arguments_are_named():
    for kwargs, match in BAD_ARGUMENTS:
        with pytest.raises(ValueError, match=match):
            ki.datasets.spirals(**kwargs)
