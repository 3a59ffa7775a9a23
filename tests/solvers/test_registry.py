"""Every registered kind is a value defined by its config (``registry.Configured``)."""

import pytest

import keras_implicit as ki
from keras_implicit.solvers import runge_kutta
from keras_implicit.solvers.registry import Configured, Registry

# Each kind: (a non-default instance, the same options given again, another option value).
CASES = {
    "ODE solver": (lambda: ki.solvers.get("bosh3"), lambda: ki.solvers.get("dopri5")),
    "step-size controller": (lambda: ki.solvers.PIDController(pcoeff=0.1, icoeff=0.3, safety=0.8),
                             lambda: ki.solvers.PIDController(pcoeff=0.1, icoeff=0.3, safety=0.7)),
    "fixed-point solver": (lambda: ki.solvers.Anderson(memory=3),
                           lambda: ki.solvers.Anderson(memory=4)),
    "ODE gradient strategy": (lambda: ki.ops.Adjoint(rtol=1e-4, seminorm=False),
                              lambda: ki.ops.Adjoint(rtol=1e-4, seminorm=True)),
    "fixed-point gradient strategy": (lambda: ki.ops.Phantom(steps=3),
                                      lambda: ki.ops.Phantom(steps=4)),
}


def test_every_kind_is_covered():
    assert set(CASES) == set(Registry.all)
    for registry in Registry.all.values():
        assert issubclass(registry.base_class, Configured)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_equal_configs_make_equal_objects(kind):
    make, make_other = CASES[kind]
    a, b, other = make(), make(), make_other()
    assert a is not b and a == b and hash(a) == hash(b)
    assert a != other
    assert len({a, b, other}) == 2
    assert type(a).from_config(a.get_config()) == a
    # The repr shows the class and the options it was made with.
    assert repr(a).startswith(type(a).__name__ + "(")
    for key, value in a.get_config().items():
        assert f"{key}={value!r}" in repr(a)


def test_hash_ignores_the_order_of_the_config():
    class Swapped(ki.solvers.StepController):
        def __init__(self, first=1, second=2, reverse=False):
            super().__init__()
            self.first, self.second, self.reverse = first, second, reverse

        def get_config(self):
            items = [("first", self.first), ("second", self.second)]
            return dict(reversed(items) if self.reverse else items)

    a, b = Swapped(reverse=False), Swapped(reverse=True)
    assert a.get_config() == b.get_config() and list(a.get_config()) != list(b.get_config())
    assert hash(a) == hash(b)


def test_a_tableau_is_a_value_with_its_own_repr():
    heun = runge_kutta.ButcherTableau("heun", c=[0, 1], a=[[], [1]], b=[0.5, 0.5], order=2)
    again = runge_kutta.ButcherTableau.from_config(heun.get_config())
    assert heun == again and hash(heun) == hash(again)
    assert heun != runge_kutta.RK4
    assert repr(heun) == "ButcherTableau('heun', stages=2, order=2)"
