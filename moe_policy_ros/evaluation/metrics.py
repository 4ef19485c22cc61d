"""Statistics of evaluation runs: the Wilson interval of a success rate, the exact McNemar
test of two methods run on the same seeds, and the normalised mutual information between two
label sequences (dominant expert vs scripted phase).

Pure numpy; no ROS, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (default 95%); (0, 1) for n = 0.

    p~ = (p + z^2 / 2n) / (1 + z^2 / n), half width z / (1 + z^2 / n) * sqrt(p (1 - p) / n
    + z^2 / 4n^2). Unlike the normal approximation it stays inside [0, 1] and is not empty at
    k = 0 or k = n.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n (got k={k}, n={n})")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value of two methods run on the same seeds: ``b`` seeds only
    the first succeeded on, ``c`` only the second (the seeds both or neither succeeded on
    say nothing about which is better). Under "equally good" each of the ``n = b + c``
    discordant seeds goes either way with probability 1/2:
    ``p = min(1, 2 * P(Binomial(n, 1/2) <= min(b, c)))``; 1 when ``n = 0``.
    """
    if b < 0 or c < 0:
        raise ValueError(f"need b, c >= 0 (got b={b}, c={c})")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def contingency(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> np.ndarray:
    """Counts ``C[i, j]`` of the pairs (a == i, b == j); labels are non-negative ints."""
    x = np.asarray(a, np.int64).ravel()
    y = np.asarray(b, np.int64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"label sequences differ in length ({x.size} vs {y.size})")
    if x.size and (x.min() < 0 or y.min() < 0):
        raise ValueError("labels must be non-negative integers")
    if not x.size:
        return np.zeros((0, 0), np.int64)
    c = np.zeros((int(x.max()) + 1, int(y.max()) + 1), np.int64)
    np.add.at(c, (x, y), 1)
    return c


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(
    a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray
) -> float:
    """NMI(a, b) = I(a; b) / ((H(a) + H(b)) / 2), in [0, 1] (arithmetic-mean normalisation).

    1 when each label of one sequence determines the label of the other and vice versa (a
    relabelling); 0 when they are independent. Two constant sequences count as identical (1);
    a constant sequence against a varying one carries no information (0). Empty input is an
    error.
    """
    c = contingency(a, b).astype(np.float64)
    n = c.sum()
    if n == 0:
        raise ValueError("normalized_mutual_information of empty sequences")
    pxy = c / n
    px, py = pxy.sum(axis=1), pxy.sum(axis=0)
    hx, hy = _entropy(px), _entropy(py)
    if hx == 0.0 and hy == 0.0:
        return 1.0
    if hx == 0.0 or hy == 0.0:
        return 0.0
    nz = pxy > 0
    mi = float((pxy[nz] * np.log(pxy[nz] / np.outer(px, py)[nz])).sum())
    return float(min(1.0, max(0.0, mi / ((hx + hy) / 2.0))))


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float | None:
    """``np.percentile`` of the finite values, None when there are none."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(np.percentile(v, q)) if v.size else None
