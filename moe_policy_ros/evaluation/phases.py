"""Does the router find skills? The dominant expert against the scripted phase labels.

:func:`router_on_dataset` runs a bundle's router over the demonstrations of a dataset
(observations as recorded: every ``every``-th step's images resized to the bundle's size and
its measured joints, the policy reset at each episode start), teacher-forced, so that each
routed observation has the script's phase label. :class:`PhaseAlignment` holds the pairs
(dominant expert, phase), their contingency table and the normalised mutual information
(NMI, :func:`metrics.normalized_mutual_information`): 1 when the dominant expert and the phase
determine each other, 0 when they are independent.

:meth:`PhaseAlignment.expert_labels` names each expert after the phase it is most dominant
in: for expert e, the phase p that maximises P(dominant = e | phase = p), the share of phase
p's observations that e dominates (normalised by the phase's length, so that a short phase
such as "grasp" is not swamped by a long one). Experts that never dominate keep their label;
two experts that win the same phase are told apart by a suffix ("grasp", "grasp_2"). It names
experts only when the NMI reaches ``min_nmi`` (default 0.3); below it the router's experts do
not follow the phases and names would mislead an operator, so the labels stay and the reason
is returned.

No ROS, no torch: the bundle runs on ONNX Runtime (CPU), as on the robot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moe_policy_ros.evaluation.metrics import contingency, normalized_mutual_information

DEFAULT_MIN_NMI = 0.3


@dataclass
class EpisodeRouting:
    """The router along one demonstration: per routed step, the dominant expert and phase."""

    index: int
    seed: int | None
    steps: list[int] = field(default_factory=list)
    dominant: list[int] = field(default_factory=list)
    active: list[list[int]] = field(default_factory=list)
    phase: list[int] = field(default_factory=list)
    phase_full: list[int] = field(default_factory=list)  # every step's phase (for figures)


@dataclass
class PhaseAlignment:
    """Dominant expert vs phase over a dataset (see the module docstring)."""

    expert_names: tuple[str, ...]
    phase_names: tuple[str, ...]
    episodes: list[EpisodeRouting]

    @property
    def dominant(self) -> np.ndarray:
        return np.concatenate([np.asarray(e.dominant, np.int64) for e in self.episodes])

    @property
    def phase(self) -> np.ndarray:
        return np.concatenate([np.asarray(e.phase, np.int64) for e in self.episodes])

    @property
    def nmi(self) -> float:
        return normalized_mutual_information(self.dominant, self.phase)

    def table(self) -> np.ndarray:
        """Counts [expert, phase] of the routed observations."""
        c = contingency(self.dominant, self.phase)
        out = np.zeros((len(self.expert_names), len(self.phase_names)), np.int64)
        out[: c.shape[0], : c.shape[1]] = c
        return out

    def expert_labels(self, min_nmi: float = DEFAULT_MIN_NMI) -> tuple[tuple[str, ...], str]:
        """(labels, reason): phase names for the experts where the NMI says the alignment is
        real, else the current labels and why they were kept."""
        nmi = self.nmi
        if not nmi >= min_nmi:
            return self.expert_names, (
                f"NMI {nmi:.2f} between dominant expert and phase is below {min_nmi:g}: the "
                f"experts do not follow the demonstration phases, labels kept"
            )
        c = self.table().astype(np.float64)
        share = c / np.maximum(c.sum(axis=0, keepdims=True), 1.0)  # P(expert | phase)
        labels = list(self.expert_names)
        used: dict[str, int] = {}
        # Strongest claims first, so that the clearest expert gets the plain phase name.
        order = np.argsort(-share.max(axis=1), kind="stable")
        for e in order:
            if c[e].sum() == 0:
                continue
            name = self.phase_names[int(np.argmax(share[e]))]
            used[name] = used.get(name, 0) + 1
            labels[e] = name if used[name] == 1 else f"{name}_{used[name]}"
        return tuple(labels), f"NMI {nmi:.2f} >= {min_nmi:g}: experts named after the phases"

    def to_dict(self) -> dict[str, Any]:
        labels, reason = self.expert_labels()
        return {
            "expert_names": list(self.expert_names),
            "phase_names": list(self.phase_names),
            "nmi": self.nmi,
            "table": self.table().tolist(),
            "labels_from_phases": list(labels),
            "labels_reason": reason,
            "episodes": [e.__dict__ for e in self.episodes],
        }


def router_on_dataset(
    bundle_dir: str | Path,
    dataset: str | Path,
    *,
    episodes: Sequence[int] | None = None,
    every: int = 5,
    intra_op_threads: int = 1,
) -> PhaseAlignment:
    """Route the dataset's recorded observations through the bundle (module docstring).

    ``episodes``: indices into the dataset (default: all); ``every``: routed step stride (5 =
    the node's 10 Hz inference at 50 Hz control). Episodes without phase labels are an error
    naming the file.
    """
    from moe_policy_ros.core.backends.ort import OrtBackend
    from moe_policy_ros.core.bundle import load_bundle
    from moe_policy_ros.core.imageconv import resize_to
    from moe_policy_ros.core.runtime import MoEPolicy
    from moe_policy_ros.core.types import Observation
    from moe_policy_ros.data.episodes import ALOHA_JOINT_NAMES, Dataset, DatasetError

    if every < 1:
        raise ValueError(f"every must be >= 1 (got {every})")
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    cams = [c.name for c in m.observation.cameras]
    data = Dataset.open(dataset, joint_names=ALOHA_JOINT_NAMES, cameras=cams)
    unknown = [j for j in m.observation.proprio.joints if j not in ALOHA_JOINT_NAMES]
    if unknown:
        raise ValueError(f"bundle {bundle_dir} proprio joints {unknown} are not ALOHA joints")
    proprio_idx = np.array([ALOHA_JOINT_NAMES.index(j) for j in m.observation.proprio.joints])
    policy = MoEPolicy(bundle, OrtBackend("cpu", intra_op_threads=intra_op_threads))
    period_ns = round(m.action.control_period_s * 1e9)
    phase_names: tuple[str, ...] | None = None
    out: list[EpisodeRouting] = []
    for i in episodes if episodes is not None else range(len(data)):
        ep = data[i]
        if ep.phase is None:
            raise DatasetError(f"{data.episode_paths()[i]}: no 'phase' labels")
        if phase_names is None:
            phase_names = ep.phase_names
        elif ep.phase_names != phase_names:
            raise DatasetError(
                f"{data.episode_paths()[i]}: phase_names {list(ep.phase_names)} differ from "
                f"the first episode's {list(phase_names)}"
            )
        policy.reset()
        rec = EpisodeRouting(index=int(i), seed=getattr(ep, "seed", None),
                             phase_full=[int(p) for p in ep.phase])
        for t in range(0, len(ep), every):
            images = {
                c.name: resize_to(np.asarray(ep.images[c.name][t]), (c.height, c.width))
                for c in m.observation.cameras
            }
            obs = Observation(images=images,
                              proprio=np.asarray(ep.qpos[t])[proprio_idx].astype(np.float32),
                              stamp_ns=t * period_ns)
            dec = policy.infer(obs).decision
            rec.steps.append(t)
            rec.dominant.append(int(dec.dominant))
            rec.active.append([int(a) for a in dec.active])
            rec.phase.append(int(ep.phase[t]))
        out.append(rec)
    if phase_names is None:
        raise ValueError(f"{dataset}: no episodes selected")
    return PhaseAlignment(tuple(m.experts.labels), phase_names, out)


def relabel_bundle(bundle_dir: str | Path, labels: Sequence[str], note: str) -> Path:
    """Write ``labels`` as the bundle's expert labels (the manifest only; the graphs and
    their hashes do not change) and append ``note`` to the provenance notes."""
    from moe_policy_ros.core.manifest import read_manifest, write_manifest

    m = read_manifest(bundle_dir)
    experts = m.experts.model_copy(update={"labels": tuple(labels)})
    notes = (m.provenance.notes + " " if m.provenance.notes else "") + note
    prov = m.provenance.model_copy(update={"notes": notes})
    new = m.model_copy(update={"experts": experts, "provenance": prov})
    # Validate through the same parser the loader uses (label count, names).
    from moe_policy_ros.core.manifest import parse_manifest

    parse_manifest(new.model_dump(mode="json"), "relabelled manifest")
    return write_manifest(bundle_dir, new)


def label_bundle_from_phases(
    bundle_dir: str | Path,
    dataset: str | Path,
    *,
    min_nmi: float = DEFAULT_MIN_NMI,
    max_episodes: int = 10,
) -> tuple[tuple[str, ...], str, PhaseAlignment]:
    """Name the bundle's experts after the dataset's phases when the alignment is real
    (:meth:`PhaseAlignment.expert_labels`); (labels now in the bundle, reason, alignment)."""
    from moe_policy_ros.data.episodes import Dataset

    n = len(Dataset.open(dataset))
    chosen = list(range(min(n, max_episodes))) if max_episodes > 0 else None
    align = router_on_dataset(bundle_dir, dataset, episodes=chosen)
    labels, reason = align.expert_labels(min_nmi)
    if labels != align.expert_names:
        relabel_bundle(
            bundle_dir, labels,
            f"Expert labels from the phases of {Path(dataset).name} "
            f"({len(align.episodes)} episodes, NMI {align.nmi:.2f}).",
        )
    return labels, reason, align
