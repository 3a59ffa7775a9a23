"""The 2-D toy densities: shapes, seeding, and the geometry each one is known for."""

import numpy as np
import pytest

import keras_implicit as ki
from keras_implicit.datasets.toy2d import EIGHT_GAUSSIANS_STD, NAMES, eight_gaussians_centers

EXPECTED = ("moons", "8gaussians", "pinwheel", "checkerboard", "rings", "2spirals", "circles")


@pytest.mark.parametrize("name", EXPECTED)
def test_every_density_draws_exactly_n_finite_points_reproducibly(name):
    x = ki.datasets.toy2d(name, 1001, seed=4)
    assert x.shape == (1001, 2) and x.dtype == np.float32 and np.all(np.isfinite(x))
    np.testing.assert_array_equal(x, ki.datasets.toy2d(name, 1001, seed=4))
    assert np.any(x != ki.datasets.toy2d(name, 1001, seed=5))
    assert np.abs(x).max() < 10.0


def test_names_are_the_ffjord_toy_densities():
    assert set(NAMES) == set(EXPECTED)


def test_8gaussians_is_an_equal_mixture_of_isotropic_gaussians():
    x = ki.datasets.toy2d("8gaussians", 40_000, seed=0).astype(np.float64)
    centers = eight_gaussians_centers()
    nearest = np.argmin(np.sum((x[:, None] - centers[None]) ** 2, -1), axis=1)
    np.testing.assert_allclose(np.bincount(nearest, minlength=8) / len(x), 1 / 8, atol=0.01)
    residual = x - centers[nearest]
    np.testing.assert_allclose(residual.std(axis=0), EIGHT_GAUSSIANS_STD, rtol=0.03)


def test_circles_and_rings_lie_on_their_radii():
    circles = np.linalg.norm(ki.datasets.toy2d("circles", 4000, seed=0), axis=1)
    for radius in (1.5, 3.0):
        assert np.mean(np.abs(circles - radius) < 0.5) == pytest.approx(0.5, abs=0.02)
    rings = np.linalg.norm(ki.datasets.toy2d("rings", 4000, seed=0), axis=1)
    nearest = np.argmin(np.abs(rings[:, None] - np.array([0.75, 1.5, 2.25, 3.0])), axis=1)
    np.testing.assert_allclose(np.bincount(nearest) / len(rings), 0.25, atol=0.01)


def test_checkerboard_fills_alternate_squares():
    x = ki.datasets.toy2d("checkerboard", 4000, seed=0)
    squares = np.floor(x / 2).astype(int)
    assert np.all((squares[:, 0] + squares[:, 1]) % 2 == 0)
    assert len({tuple(s) for s in squares}) == 8


def test_bad_arguments_name_the_argument_and_value():
    with pytest.raises(ValueError, match=r"Valid names: \['moons'.*Received: name='swissroll'"):
        ki.datasets.toy2d("swissroll", 10)
    with pytest.raises(ValueError, match="n=0"):
        ki.datasets.toy2d("moons", 0)
