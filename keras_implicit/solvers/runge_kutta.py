"""Explicit Runge–Kutta methods as data: validated Butcher tableaux.

A method is its tableau (``a``, ``b``, ``c``, optionally an embedded ``b_error``
for adaptive step control and ``b_mid`` for dense output at the midpoint) plus
the order it claims. :class:`ButcherTableau` checks the claim against the
Runge–Kutta order conditions (all rooted trees up to order 5) when it is built,
so a mistyped coefficient fails at import time rather than as a silently
wrong solution.
"""

import fractions
import math

from keras_implicit import validation
from keras_implicit.solvers.registry import Configured

_TOL = 1e-12


def _matvec(a, v):
    return [sum(a_ij * v_j for a_ij, v_j in zip(row, v)) for row in a]


def _dot(u, v):
    return sum(u_i * v_i for u_i, v_i in zip(u, v))


def _order_conditions(a, c, theta=1.0):
    """Yields ``(order, Phi, target)`` for every rooted tree up to order 5.

    ``Phi`` is the vector of elementary weights; a method of order p satisfies
    ``b . Phi == theta**order / gamma`` for every tree of order <= p (with
    ``theta = 1``; a dense output ``b(theta)`` satisfies it at ``theta``).
    """
    ones = [1.0] * len(c)
    c2 = [x**2 for x in c]
    c3 = [x**3 for x in c]
    ac = _matvec(a, c)
    ac2 = _matvec(a, c2)
    aac = _matvec(a, ac)
    trees = [
        (1, ones, 1),
        (2, c, 2),
        (3, c2, 3),
        (3, ac, 6),
        (4, c3, 4),
        (4, [x * y for x, y in zip(c, ac)], 8),
        (4, ac2, 12),
        (4, aac, 24),
        (5, [x**4 for x in c], 5),
        (5, [x * y for x, y in zip(c2, ac)], 10),
        (5, [y**2 for y in ac], 20),
        (5, [x * y for x, y in zip(c, ac2)], 15),
        (5, [x * y for x, y in zip(c, aac)], 30),
        (5, _matvec(a, c3), 20),
        (5, _matvec(a, [x * y for x, y in zip(c, ac)]), 40),
        (5, _matvec(a, ac2), 60),
        (5, _matvec(a, aac), 120),
    ]
    for order, phi, gamma in trees:
        yield order, phi, theta**order / gamma


def satisfied_order(a, b, c, theta=1.0, max_order=5):
    """The highest order p <= max_order whose conditions ``b`` satisfies."""
    order = max_order
    for tree_order, phi, target in _order_conditions(a, c, theta):
        if tree_order <= order and abs(_dot(b, phi) - target) > _TOL:
            order = tree_order - 1
    return order


class ButcherTableau(Configured):
    """An explicit Runge–Kutta method, validated on construction.

    Args:
        name: the method's name.
        c: nodes, ``c[0] == 0``.
        a: strictly lower-triangular stage matrix given as rows of growing
            length: ``a[i]`` has ``i`` entries.
        b: weights of the solution.
        order: the order of the solution ``b``; checked against the order
            conditions (up to order 5).
        b_error: weights of the embedded lower-order solution, for error
            control; ``error_order`` is its order.
        b_mid: weights giving the solution at the middle of the step (dense
            output), of order ``mid_order`` at ``theta = 1/2``.

    Raises:
        ValueError: if the shapes are inconsistent, ``c`` is not the row sums
            of ``a``, or a claimed order is not met.
    """

    def __init__(self, name, c, a, b, order, b_error=None, error_order=None, b_mid=None,
                 mid_order=None):
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty string. Received: name={name!r}")
        self.name = name
        self.c = _numbers("c", c)
        try:
            self.a = [_numbers(f"a[{i}]", row) for i, row in enumerate(a)]
        except TypeError:
            raise validation.ArgumentTypeError(
                f"{name}: `a` must be a list of rows of numbers. Received: a={a!r}") from None
        self.b = _numbers("b", b)
        self.order = validation.positive_int("order", order)
        self.b_error = None if b_error is None else _numbers("b_error", b_error)
        self.error_order = validation.optional(validation.positive_int, "error_order",
                                               error_order)
        self.b_mid = None if b_mid is None else _numbers("b_mid", b_mid)
        self.mid_order = validation.optional(validation.positive_int, "mid_order", mid_order)
        self._validate()

    @property
    def num_stages(self):
        return len(self.c)

    @property
    def fsal(self):
        """First same as last: the last stage is evaluated at the new solution."""
        s = self.num_stages
        return (
            s > 1
            and self.c[-1] == 1.0
            and all(abs(x - y) < _TOL for x, y in zip(self.a[-1], self.b[: s - 1]))
            and self.b[-1] == 0.0
        )

    def _square_a(self):
        s = self.num_stages
        return [row + [0.0] * (s - len(row)) for row in self.a]

    def _validate(self):
        s = self.num_stages
        if s < 1 or self.c[0] != 0.0:
            raise ValueError(f"{self.name}: c[0] must be 0. Received: c={self.c}")
        if len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(
                f"{self.name}: a must be strictly lower triangular with row i holding i "
                f"entries. Received row lengths {[len(row) for row in self.a]} for {s} stages."
            )
        for i, row in enumerate(self.a):
            if abs(sum(row) - self.c[i]) > _TOL:
                raise ValueError(
                    f"{self.name}: c[{i}] must equal the sum of a[{i}]. "
                    f"Received: c[{i}]={self.c[i]}, sum(a[{i}])={sum(row)}"
                )
        a = self._square_a()
        for label, weights, claimed, theta in [
            ("b", self.b, self.order, 1.0),
            ("b_error", self.b_error, self.error_order, 1.0),
            ("b_mid", self.b_mid, self.mid_order, 0.5),
        ]:
            if weights is None:
                continue
            if len(weights) != s or claimed is None:
                raise ValueError(
                    f"{self.name}: {label} needs {s} entries and a claimed order. "
                    f"Received: {len(weights)} entries, order={claimed}"
                )
            reached = satisfied_order(a, weights, self.c, theta=theta, max_order=min(claimed, 5))
            if reached < min(claimed, 5):
                raise ValueError(
                    f"{self.name}: {label} claims order {claimed} but satisfies the order "
                    f"conditions only up to order {reached}."
                )

    def get_config(self):
        return {"name": self.name, "c": list(self.c), "a": [list(row) for row in self.a],
                "b": list(self.b), "order": self.order, "b_error": self.b_error,
                "error_order": self.error_order, "b_mid": self.b_mid, "mid_order": self.mid_order}

    def __repr__(self):
        return f"ButcherTableau({self.name!r}, stages={self.num_stages}, order={self.order})"


def serialize_tableau(tableau):
    """A shipped tableau as its name; any other (a custom one, whatever its name) in full."""
    return tableau.name if TABLEAUX.get(tableau.name) == tableau else tableau.get_config()


def get_tableau(identifier, argument="tableau"):
    """A ``ButcherTableau`` from itself, a shipped tableau's name or a config dict."""
    if isinstance(identifier, ButcherTableau):
        return identifier
    if isinstance(identifier, str):
        return TABLEAUX[validation.known_name("Butcher tableau", argument, identifier,
                                              sorted(TABLEAUX))]
    if isinstance(identifier, dict):
        try:
            return ButcherTableau.from_config(identifier)
        except TypeError as error:
            raise ValueError(f"Invalid Butcher tableau config: {error}. "
                             f"Received: {argument}={identifier!r}") from None
    raise TypeError(f"`{argument}` must be a ButcherTableau, a shipped tableau's name or a "
                    f"config dict. Received: {argument}={identifier!r}")


def _numbers(name, values):
    """A list of finite floats, or a clear error naming the coefficient list."""
    try:
        out = [float(x) for x in values]
    except (TypeError, ValueError):
        raise validation.ArgumentTypeError(
            f"`{name}` must be a list of numbers. Received: {name}={values!r}") from None
    if not all(math.isfinite(x) for x in out):
        raise ValueError(f"`{name}` must hold finite numbers. Received: {name}={values!r}")
    return out


def _f(text):
    return float(fractions.Fraction(text))


EULER = ButcherTableau("euler", c=[0], a=[[]], b=[1], order=1)

MIDPOINT = ButcherTableau("midpoint", c=[0, 0.5], a=[[], [0.5]], b=[0, 1], order=2)

RK4 = ButcherTableau(
    "rk4",
    c=[0, 0.5, 0.5, 1],
    a=[[], [0.5], [0, 0.5], [0, 0, 1]],
    b=[1 / 6, 1 / 3, 1 / 3, 1 / 6],
    order=4,
)

# Bogacki & Shampine (1989): a 3(2) pair, first same as last.
BOGACKI_SHAMPINE = ButcherTableau(
    "bosh3",
    c=[0, 0.5, 0.75, 1],
    a=[[], [0.5], [0, 0.75], [2 / 9, 1 / 3, 4 / 9]],
    b=[2 / 9, 1 / 3, 4 / 9, 0],
    order=3,
    b_error=[7 / 24, 1 / 4, 1 / 3, 1 / 8],
    error_order=2,
)

# Dormand & Prince (1980): a 5(4) pair, first same as last. b_mid is
# Shampine's (1986) continuous extension evaluated at theta = 1/2, as used by
# DOPRI5's dense output (Hairer, Norsett & Wanner, Solving ODEs I, II.6).
DORMAND_PRINCE = ButcherTableau(
    "dopri5",
    c=[0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1],
    a=[
        [],
        [1 / 5],
        [3 / 40, 9 / 40],
        [44 / 45, -56 / 15, 32 / 9],
        [_f("19372/6561"), _f("-25360/2187"), _f("64448/6561"), _f("-212/729")],
        [_f("9017/3168"), _f("-355/33"), _f("46732/5247"), _f("49/176"), _f("-5103/18656")],
        [_f("35/384"), 0, _f("500/1113"), _f("125/192"), _f("-2187/6784"), _f("11/84")],
    ],
    b=[_f("35/384"), 0, _f("500/1113"), _f("125/192"), _f("-2187/6784"), _f("11/84"), 0],
    order=5,
    b_error=[
        _f("5179/57600"), 0, _f("7571/16695"), _f("393/640"), _f("-92097/339200"),
        _f("187/2100"), _f("1/40"),
    ],
    error_order=4,
    b_mid=[
        _f("6025192743/30085553152") / 2, 0, _f("51252292925/65400821598") / 2,
        _f("-2691868925/45128329728") / 2, _f("187940372067/1594534317056") / 2,
        _f("-1776094331/19743644256") / 2, _f("11237099/235043384") / 2,
    ],
    mid_order=4,
)

assert math.isclose(sum(DORMAND_PRINCE.b), 1.0)

TABLEAUX = {t.name: t for t in (EULER, MIDPOINT, RK4, BOGACKI_SHAMPINE, DORMAND_PRINCE)}
