"""Value types shared by the ROS-free core.

These are the contracts between the routing strategies, the inference runtime, the chunk
scheduler, the safety filter and the ROS 2 adapter nodes. They are plain frozen dataclasses
holding numpy arrays so that every layer can be tested without ROS.

Conventions: arrays are float32 unless stated; joint values in radians (grippers in the unit
of their joint), times in seconds or integer nanoseconds (``*_ns``) on a monotonic clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class Level(IntEnum):
    """Diagnostic levels, numerically equal to diagnostic_msgs/DiagnosticStatus (the one
    level type of the package: safety filter, camera verdicts, diagnostics tasks)."""

    OK = 0
    WARN = 1
    ERROR = 2
    STALE = 3


@dataclass(frozen=True)
class RouterOutputs:
    """What the encoder/router stage of a bundle produces for one observation.

    ``gate_logits`` is always present (one score per expert). The other fields are present
    only for the families that expose them: AdaMoE ``adapter_weights`` (scale adapter, one
    weight per expert), Di-BM ``energies`` (per-expert energy, lower = more claimed), LAR-MoE
    ``latent`` (the student latent z).
    """

    gate_logits: np.ndarray
    adapter_weights: np.ndarray | None = None
    energies: np.ndarray | None = None
    latent: np.ndarray | None = None


@dataclass(frozen=True)
class RouterState:
    """Router state for operators (topics, diagnostics, the monitor).

    ``gates`` are the softmax of the gate logits over all experts; ``entropy`` is in nats;
    ``switched`` is True when the active set differs from the previous decision's.
    """

    gates: np.ndarray
    entropy: float
    switched: bool
    adapter_weights: np.ndarray | None = None
    energies: np.ndarray | None = None
    latent: np.ndarray | None = None


@dataclass(frozen=True)
class RoutingDecision:
    """The active set and how the active experts' outputs are combined.

    ``active`` is int64, sorted ascending, unique, non-empty; ``weights`` is float32 aligned
    with ``active``, computed as the bundle's ``combination`` says (renormalised gates; AdaMoE
    router probability + adapter output, or adapter weights alone; 1 per active SMP skill).
    """

    active: np.ndarray
    weights: np.ndarray
    state: RouterState

    @property
    def k(self) -> int:
        return int(self.active.shape[0])

    @property
    def dominant(self) -> int:
        """Index of the expert with the largest gate (over all experts)."""
        return int(np.argmax(self.state.gates))


@dataclass(frozen=True)
class Observation:
    """One assembled observation, in the bundle's order.

    ``images`` maps camera name -> uint8 array HxWx3 (RGB) at the bundle's size;
    ``proprio`` is float32 in the bundle's proprio joint order (raw units, not normalised);
    ``stamp_ns`` is the observation time (oldest source stamp) in ROS time nanoseconds.
    """

    images: dict[str, np.ndarray]
    proprio: np.ndarray
    stamp_ns: int = 0


@dataclass(frozen=True)
class PolicyOutput:
    """One action chunk with its routing decision and per-stage timings.

    ``actions`` is float64 [H, A] in the bundle's action joint order, raw units
    (denormalised). ``timings_ms`` maps stage name (``preprocess``, ``encoder``, ``routing``,
    ``experts``, ``total``) to milliseconds.
    """

    actions: np.ndarray
    decision: RoutingDecision
    timings_ms: dict[str, float] = field(default_factory=dict)
    stamp_ns: int = 0
