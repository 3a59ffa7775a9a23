"""``ContinuousFlow`` and ``LatentODE`` trained by Keras's ``fit`` under ``MirroredStrategy``.

Two logical CPUs split every batch of 16 in two. Both cases compute each
sample's loss and gradient independently of its shard (fixed-grid solver,
exact trace; a latent ODE whose posterior noise is negligible, see
``training_cases.latent_ode_without_noise``), so the weights must match one
device's to round-off: 1e-5 relative (measured: below 1e-7). A replica's loss
that is not divided by the number of replicas doubles the step (a 10-20%
difference here).
"""

import keras
import pytest

import training_cases

pytestmark = pytest.mark.plain_graph  # the defaults under the strategy: tests/layers/
# test_neural_ode.py, test_deq.py and the two-worker cluster (tests/conftest.py)


def train_with_fit(name, strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model, dataset = training_cases.build(name)
    initial = training_cases.trainable_weights(model)
    model.fit(dataset, epochs=training_cases.EPOCHS, shuffle=False, verbose=0)
    return initial, training_cases.trainable_weights(model)


@pytest.mark.parametrize("name", ["continuous_flow_exact_trace", "latent_ode_without_noise"])
def test_fit_under_mirrored_strategy_matches_one_device(two_device_strategies, name):
    one_device, mirrored = two_device_strategies
    initial, single = train_with_fit(name, one_device)
    _, replicated = train_with_fit(name, mirrored)
    moved = training_cases.relative_difference(initial, single)
    difference = training_cases.relative_difference(replicated, single)
    assert moved > 1e3 * training_cases.EXACT_TOLERANCE, moved
    assert difference < training_cases.EXACT_TOLERANCE, (difference, moved)
