"""The bundle manifest (``policy.yaml``): what a bundle contains and promises.

A bundle is a directory::

    models/<name>/
      policy.yaml        # this manifest
      encoder.onnx       # encoder/router stage
      experts.onnx       # expert stage (for the flow family: one denoising step)

Graph contracts (batch size is fixed to 1; static shapes so that TensorRT and CUDA graphs
apply):

* encoder stage inputs: ``image_<camera>`` float32 [1, C, H, W] (already normalised by the
  runtime as ``(x / 255 - mean) / std`` per channel) and ``proprio`` float32 [1, P]
  (normalised ``(q - mean) / std``). Outputs: ``context`` float32 [1, D], ``gate_logits``
  float32 [1, E], and per family ``adapter_weights`` [1, E] (adamoe), ``energies`` [1, E]
  (dibm), ``latent`` [1, Z] (lar), ``basis`` [1, E, H*A, R] (smp, orthonormal columns across
  all experts).
* expert stage, direct families (adamoe, dibm, lar, dense): inputs ``context`` [1, D],
  ``expert_idx`` int64 [k] and ``expert_weights`` float32 [k]; output ``actions`` float32
  [1, H, A] (normalised), equal to sum_j weights[j] * expert_{idx[j]}(context). The graph
  gathers the active experts' weights, so its cost grows with k.
* expert stage, flow family (smp): one denoising step. Inputs ``context`` [1, D],
  ``expert_idx`` int64 [k], ``x_t`` float32 [1, k, R], ``t`` float32 [1]; output ``velocity``
  float32 [1, k, R]. The runtime integrates x from noise (t = 0) to data (t = 1) with
  ``sampler.steps`` Euler steps, then combines actions = sum_j w_j * basis[idx_j] @ x_j.

Combination weights w (``combination``; ``core/routing.py`` computes them, the models train
with the same): ``gates`` the router gates renormalised over the active set; ``adapter``
(AdaMoE ``adapter_sigmoid`` variant) the scale adapter's outputs of the active experts as
given; ``router_plus_adapter`` (AdaMoE as released) softmax(gate_logits)[i] + adapter[i];
``unit`` (SMP) 1 for every active skill, so the chunk is the projection of the denoised
coefficients onto the active skills' span. A manifest without ``combination`` (written before
it existed) gets its family's earlier behaviour: ``adapter`` for adamoe, ``gates`` otherwise.

``novelty`` (Di-BM, when the model was calibrated over its training set): the range of the
novelty score (the lowest calibrated expert energy) over the training observations, from
which an operator picks ``safety.ood_energy_threshold`` (see README, "Out of distribution").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from moe_policy_ros.core.config import RoutingConfig
from moe_policy_ros.core.io import load_yaml, validation_error_lines
from moe_policy_ros.core.routing import Combination

FORMAT_VERSION = 1
MANIFEST_NAME = "policy.yaml"
Family = Literal["adamoe", "smp", "dibm", "lar", "dense"]
FAMILIES: tuple[str, ...] = get_args(Family)
#: the combinations each family may declare (the first is what a manifest without the field
#: gets: the family's behaviour before the field existed)
FAMILY_COMBINATIONS: dict[str, tuple[Combination, ...]] = {
    "adamoe": ("adapter", "router_plus_adapter"),
    "smp": ("gates", "unit"),
    "dibm": ("gates",),
    "lar": ("gates",),
    "dense": ("gates",),
}


class BundleError(ValueError):
    """A bundle is missing, corrupt, tampered or does not match its manifest."""


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessSpec(_M):
    """How the policy's training images were made from the camera's frames.

    ``resize``: the whole frame resized to the input size; ``center_crop``: the largest
    centred region with the input's aspect ratio, then resized; ``roi``: the region
    ``roi = [x, y, w, h]`` (source pixels), then resized. ``interpolation`` ``area`` is
    INTER_AREA when shrinking and bilinear when enlarging (``imageconv.resize_to``).
    Bundles without this section get the default (resize, area).
    """

    mode: Literal["resize", "center_crop", "roi"] = "resize"
    roi: tuple[int, int, int, int] | None = None
    interpolation: Literal["area", "linear", "nearest"] = "area"

    @model_validator(mode="after")
    def _roi(self) -> PreprocessSpec:
        if self.mode == "roi":
            if self.roi is None:
                raise ValueError("preprocess mode 'roi' needs roi: [x, y, w, h] (pixels)")
            x, y, w, h = self.roi
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                raise ValueError(f"preprocess roi {list(self.roi)} needs x, y >= 0, w, h > 0")
        elif self.roi is not None:
            raise ValueError(f"preprocess roi is set but mode is {self.mode!r} (not 'roi')")
        return self


class CameraSpec(_M):
    name: str
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[3] = 3
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    preprocess: PreprocessSpec = PreprocessSpec()


class ProprioSpec(_M):
    joints: tuple[str, ...] = Field(min_length=1)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @model_validator(mode="after")
    def _lens(self) -> ProprioSpec:
        n = len(self.joints)
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(
                f"proprio mean/std need {n} values (got {len(self.mean)}/{len(self.std)})"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"proprio std must be positive (got {list(self.std)})")
        return self


class ObservationSpec(_M):
    cameras: tuple[CameraSpec, ...] = ()
    proprio: ProprioSpec


class ActionSpec(_M):
    dim: int = Field(gt=0)
    joints: tuple[str, ...]
    chunk_length: int = Field(gt=0, description="H, control steps per chunk")
    control_period_s: float = Field(gt=0)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @model_validator(mode="after")
    def _lens(self) -> ActionSpec:
        if len(self.joints) != self.dim:
            raise ValueError(f"action joints has {len(self.joints)} names for dim {self.dim}")
        if len(self.mean) != self.dim or len(self.std) != self.dim:
            raise ValueError(f"action mean/std need {self.dim} values")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"action std must be positive (got {list(self.std)})")
        return self


class ExpertsSpec(_M):
    count: int = Field(ge=1)
    labels: tuple[str, ...]

    @model_validator(mode="after")
    def _labels(self) -> ExpertsSpec:
        if len(self.labels) != self.count:
            raise ValueError(f"experts.labels has {len(self.labels)} labels for {self.count}")
        return self


class SamplerSpec(_M):
    kind: Literal["flow_euler"] = "flow_euler"
    steps: int = Field(ge=1)
    rank: int = Field(ge=1, description="R, coefficients per skill")


class StageFile(_M):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    external_data: dict[str, str] = Field(
        default_factory=dict,
        description="ONNX external-data files of this stage (bundle-relative path -> SHA-256)",
    )

    @model_validator(mode="after")
    def _hashes(self) -> StageFile:
        bad = {k: v for k, v in self.external_data.items() if not _is_sha256(v)}
        if bad:
            raise ValueError(f"external_data hashes must be 64 lowercase hex digits: {bad}")
        return self


def _is_sha256(v: str) -> bool:
    return len(v) == 64 and all(c in "0123456789abcdef" for c in v)


class TrainingProvenance(_M):
    """Where a trained bundle came from (written by ``moe-policy-ros export --checkpoint`` for
    checkpoints of ``moe-policy-ros train``): data, budget, and how it was selected."""

    trainer: str = ""
    dataset: str = ""
    dataset_sha256: str = ""
    task: str = ""
    demo_seeds: tuple[int, ...] = ()
    train_episodes: int = 0
    val_episodes: int = 0
    steps: int = 0
    wall_time_s: float = 0.0
    val_loss: float | None = None
    rollout_successes: int | None = None
    rollout_episodes: int = 0
    rollout_seeds: tuple[int, ...] = ()
    train_seed: int = 0


class Provenance(_M):
    exporter: str = ""
    created: str = ""
    torch_version: str = ""
    onnx_opset: int = 0
    source: str = ""
    parity_max_abs_err: float | None = None
    checkpoint_sha256: str = Field(
        default="",
        description="SHA-256 of the weights-only torch checkpoint the stages were exported "
        "from (kept outside the bundle; the torch backend checks it); empty = none",
    )
    notes: str = ""
    training: TrainingProvenance | None = None


class NoveltySpec(_M):
    """Range of the novelty score over the training set (Di-BM calibration)."""

    score: Literal["min_energy"] = "min_energy"
    samples: int = Field(ge=1, description="training observations calibrated over")
    energy_offsets: tuple[float, ...] = Field(
        description="per-expert log Z_i added to the raw energies inside encoder.onnx"
    )
    min: float
    p50: float
    p95: float
    p99: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> NoveltySpec:
        q = [self.min, self.p50, self.p95, self.p99, self.max]
        if q != sorted(q):
            raise ValueError(f"novelty quantiles must be ascending (got {q})")
        return self


class Manifest(_M):
    format_version: int
    name: str
    family: Family
    observation: ObservationSpec
    action: ActionSpec
    experts: ExpertsSpec
    routing: RoutingConfig
    context_dim: int = Field(gt=0)
    latent_dim: int = 0
    sampler: SamplerSpec | None = None
    combination: Combination | None = Field(
        default=None, description="expert combination weights; None = the family's default"
    )
    novelty: NoveltySpec | None = None
    stages: dict[str, StageFile]
    provenance: Provenance = Provenance()

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is not supported "
                f"(this runtime reads {FORMAT_VERSION})"
            )
        if not self.routing.strategy:
            raise ValueError("routing.strategy: a bundle must name its default strategy")
        need = {"encoder", "experts"}
        if set(self.stages) != need:
            raise ValueError(f"stages must be exactly {sorted(need)} (got {sorted(self.stages)})")
        if self.family == "smp" and self.sampler is None:
            raise ValueError("family smp needs a sampler section (kind, steps, rank)")
        if self.family != "smp" and self.sampler is not None:
            raise ValueError(f"family {self.family} takes no sampler section")
        if self.family == "lar" and self.latent_dim <= 0:
            raise ValueError("family lar needs latent_dim > 0")
        allowed = FAMILY_COMBINATIONS[self.family]
        if self.combination is not None and self.combination not in allowed:
            raise ValueError(
                f"combination {self.combination!r} is not defined for family {self.family} "
                f"(allowed: {list(allowed)})"
            )
        if self.novelty is not None and self.family != "dibm":
            raise ValueError(f"family {self.family} has no novelty score (dibm only)")
        if self.novelty is not None and len(self.novelty.energy_offsets) != self.experts.count:
            raise ValueError(
                f"novelty.energy_offsets has {len(self.novelty.energy_offsets)} values for "
                f"{self.experts.count} experts"
            )
        return self

    @property
    def is_flow(self) -> bool:
        return self.family == "smp"

    @property
    def combination_weights(self) -> Combination:
        """The declared combination, or the family's pre-``combination`` behaviour."""
        return self.combination or FAMILY_COMBINATIONS[self.family][0]


def parse_manifest(data: Any, source: str = MANIFEST_NAME) -> Manifest:
    """Validate manifest data; errors name the file, field and bad value."""
    if not isinstance(data, dict):
        raise BundleError(f"{source}: manifest must be a mapping (got {type(data).__name__})")
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        lines = validation_error_lines(err)
        raise BundleError(f"{source}: invalid manifest:\n  " + "\n  ".join(lines)) from None


def read_manifest(bundle_dir: str | Path) -> Manifest:
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{path}: bundle manifest not found")
    return parse_manifest(load_yaml(path, "bundle manifest", BundleError), str(path))


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    path = Path(bundle_dir) / MANIFEST_NAME
    data = manifest.model_dump(mode="json")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
