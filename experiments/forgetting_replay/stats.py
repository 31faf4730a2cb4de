"""Means with 95% Student-t intervals over seeds (pure; no SciPy at run time).

    mean ± t(0.975, n - 1) · s / √n,   s = the sample standard deviation (n - 1 in the denominator)

The two-sided 97.5% quantiles of Student's t for 1-30 degrees of freedom are tabulated (SciPy's
`stats.t.ppf(0.975, df)`, checked by a test); more seeds than 31 are refused rather than
approximated. One value has no interval (None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

T975 = (
    12.70620474, 4.30265273, 3.18244631, 2.77644511, 2.57058184, 2.44691185, 2.36462425,
    2.30600414, 2.26215716, 2.22813885, 2.20098516, 2.17881283, 2.16036866, 2.14478669,
    2.13144955, 2.1199053, 2.10981558, 2.10092204, 2.09302405, 2.08596345, 2.07961384,
    2.07387307, 2.06865761, 2.06389856, 2.05953855, 2.05552944, 2.05183052, 2.04840714,
    2.04522964, 2.04227246,
)  # fmt: skip


def t975(df: int) -> float:
    """Student-t 0.975 quantile for df = 1..30 degrees of freedom."""
    if not 1 <= df <= len(T975):
        raise ValueError(f"t interval: {df} degrees of freedom; tabulated for 1-{len(T975)}")
    return T975[df - 1]


@dataclass(frozen=True)
class Interval:
    n: int
    mean: float
    sd: float | None  # sample standard deviation; None for one value
    half: float | None  # half-width of the 95% t-interval; None for one value

    @property
    def lo(self) -> float | None:
        return None if self.half is None else self.mean - self.half

    @property
    def hi(self) -> float | None:
        return None if self.half is None else self.mean + self.half


def t_interval(values: Sequence[float]) -> Interval:
    """Mean, sample sd and 95% t-interval half-width of `values` (at least one, finite)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("t interval: no values")
    if any(not math.isfinite(v) for v in vals):
        raise ValueError(f"t interval: non-finite value in {vals}")
    n = len(vals)
    mean = math.fsum(vals) / n
    if n == 1:
        return Interval(1, mean, None, None)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    return Interval(n, mean, sd, t975(n - 1) * sd / math.sqrt(n))


def reduction(forgetting_r: float, forgetting_0: float) -> float | None:
    """1 - F(r) / F(0): the share of the no-replay forgetting that replay removed (None if
    there was no forgetting at r = 0 to remove)."""
    return None if forgetting_0 <= 0 else 1.0 - forgetting_r / forgetting_0
