"""Wilson interval and normalised mutual information (evaluation/metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moe_policy_ros.evaluation.metrics import (
    contingency,
    mcnemar_exact,
    normalized_mutual_information,
    percentile,
    wilson_interval,
)


def test_wilson_known_values_and_bounds() -> None:
    assert wilson_interval(40, 50) == pytest.approx((0.6696, 0.8876), abs=1e-4)
    assert wilson_interval(45, 50) == pytest.approx((0.7864, 0.9565), abs=1e-4)
    lo, hi = wilson_interval(50, 50)
    assert hi == 1.0 and lo == pytest.approx(0.9287, abs=1e-4)
    with pytest.raises(ValueError, match="k=-1"):
        wilson_interval(-1, 5)


def test_mcnemar_exact_known_values() -> None:
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)  # ten discordant seeds, one way
    assert mcnemar_exact(0, 10) == mcnemar_exact(10, 0)  # symmetric
    assert mcnemar_exact(3, 1) == pytest.approx(2 * (1 + 4) / 16)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    # 11 vs 2 discordant: p = 2 * (1 + 13 + 78) / 8192
    assert mcnemar_exact(11, 2) == pytest.approx(2 * 92 / 8192)
    with pytest.raises(ValueError, match="b=-1"):
        mcnemar_exact(-1, 3)


def test_nmi_of_a_relabelling_is_one_and_of_independent_labels_zero() -> None:
    phase = np.repeat([0, 1, 2, 3], 25)
    experts = np.array([5, 2, 7, 0])[phase]  # a permutation of names
    assert normalized_mutual_information(experts, phase) == pytest.approx(1.0)
    # independent by construction: every expert equally often in every phase
    a = np.tile([0, 1], 50)
    b = np.repeat([0, 1], 50)
    assert normalized_mutual_information(a, b) == pytest.approx(0.0, abs=1e-12)


def test_nmi_known_value_and_symmetry() -> None:
    # H(a) = ln 2, H(b) = -(3/4 ln 3/4 + 1/4 ln 1/4), H(a, b) = -(1/2 ln 1/2 + 2/4 ln 1/4);
    # NMI = (H(a) + H(b) - H(a, b)) / ((H(a) + H(b)) / 2) = 0.34379...
    a, b = [0, 0, 1, 1], [0, 0, 0, 1]
    ha = math.log(2)
    hb = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    hab = -(0.5 * math.log(0.5) + 0.5 * math.log(0.25))
    want = (ha + hb - hab) / ((ha + hb) / 2)
    assert want == pytest.approx(0.3438, abs=1e-4)
    assert normalized_mutual_information(a, b) == pytest.approx(want)
    assert normalized_mutual_information(b, a) == pytest.approx(want)


def test_nmi_degenerate_and_bad_input() -> None:
    assert normalized_mutual_information([3, 3, 3], [1, 1, 1]) == 1.0
    assert normalized_mutual_information([3, 3, 3], [0, 1, 2]) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        normalized_mutual_information([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        normalized_mutual_information([], [])
    with pytest.raises(ValueError, match="non-negative"):
        contingency([-1, 0], [0, 0])


def test_percentile_ignores_non_finite() -> None:
    assert percentile([1.0, float("nan"), 3.0], 50) == 2.0
    assert percentile([float("nan")], 50) is None
