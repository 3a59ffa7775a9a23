"""Mixed-precision tests: each runs under a global dtype policy, reset after it."""

import keras
import pytest

POLICIES = ("mixed_float16", "mixed_bfloat16")


@pytest.fixture(autouse=True)
def _restore_global_policy():
    """Whatever a test sets, the next one starts from the policy it found (float32)."""
    saved = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(saved)


@pytest.fixture(params=POLICIES)
def policy(request):
    """Sets the global policy to ``mixed_float16`` or ``mixed_bfloat16`` (the name)."""
    keras.mixed_precision.set_global_policy(request.param)
    return request.param
