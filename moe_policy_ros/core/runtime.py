"""MoEPolicy: preprocess -> encoder -> routing -> experts (+ flow sampler) -> denormalise.

One :meth:`MoEPolicy.infer` call produces one action chunk:

1. **preprocess** validates the observation against the manifest (camera names, HxWx3 uint8
   images at the bundle's size, proprio length, NaN/Inf) and raises :class:`ObservationError`
   naming the bad value; then normalises images ``(x / 255 - mean) / std`` into [1, 3, H, W]
   float32 and proprio ``(q - mean) / std`` into [1, P].
2. **encoder** runs the encoder/router stage once.
3. **routing** turns the router outputs into a decision (``core/routing.py``). The policy's
   routing config is merged over the bundle's default: fields set explicitly in the override
   win, an empty ``strategy`` keeps the bundle's.
4. **experts** runs the expert stage with only the active experts. Direct families get
   ``expert_idx`` + ``expert_weights`` and return the combined chunk. The flow family (smp)
   integrates the active experts' coefficients with ``sampler.steps`` Euler steps from t = 0
   (noise) to t = 1 (data), the active set fixed for the chunk, then combines
   ``actions = sum_j w_j * basis[idx_j] @ x_j`` (:func:`compose_skills`). The weights follow
   the manifest's ``combination`` (``core/routing.py``), the one the model trained with.
   On ONNX Runtime CPU the flow expert graph is split at load time so that the active
   experts' weights are gathered once per chunk, not on every Euler step
   (``core/backends/ort_hoist.py``; ``gather_once=False`` keeps the per-call graph).
5. the chunk is denormalised (``a * std + mean``) into float64 [H, A].

Real-time chunking (``merge: rtc``): ``infer(obs, guidance=RtcGuidance(...))`` guides the flow
sampler toward the committed commands the scheduler hands over (``core/rtc.py``); the active
set and the chunk's gathered expert weights stay fixed while it runs. Only the flow family
has a sampler to guide: guidance for a direct family raises ``ValueError``.

Determinism: the flow noise comes from ``numpy.random.default_rng(seed)``: each chunk draws a
float32 standard-normal [E, R] block (one row per expert, whether active or not) and uses the
active experts' rows, so the noise of an expert does not depend on which others are active.
:meth:`reset` restarts that stream and the routing state, so the same observations after a
reset give the same chunks. A policy (its stages and routing state) serves one inference
thread; it is not thread-safe.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from moe_policy_ros.core.backends.base import Backend, Stage
from moe_policy_ros.core.bundle import BundleError, LoadedBundle, graph_contract
from moe_policy_ros.core.config import RoutingConfig
from moe_policy_ros.core.manifest import Manifest
from moe_policy_ros.core.routing import RoutingStrategy, make_strategy
from moe_policy_ros.core.rtc import (
    RtcGuidance,
    check_block_diagonal,
    guided_flow_sample,
    soft_mask,
)
from moe_policy_ros.core.types import Observation, PolicyOutput, RouterOutputs, RoutingDecision

__all__ = [
    "MoEPolicy",
    "ObservationError",
    "Policy",
    "compose_skills",
    "merge_routing",
    "synthetic_observation",
]


class ObservationError(ValueError):
    """An observation does not match the bundle's observation spec; names the bad value."""


class Policy(Protocol):
    def infer(self, obs: Observation) -> PolicyOutput: ...

    def reset(self) -> None: ...


def merge_routing(default: RoutingConfig, override: RoutingConfig | None) -> RoutingConfig:
    """``override``'s explicitly set fields over the bundle ``default`` (empty strategy: keep)."""
    if override is None:
        return default
    updates = {
        f: getattr(override, f)
        for f in override.model_fields_set
        if not (f == "strategy" and not override.strategy)
    }
    return RoutingConfig.model_validate({**default.model_dump(), **updates})


def synthetic_observation(manifest: Manifest, seed: int | None = None) -> Observation:
    """A valid observation: random images/proprio (``seed``) or mid-grey images at the mean."""
    obs = manifest.observation
    mean = np.asarray(obs.proprio.mean, dtype=np.float32)
    if seed is None:
        images = {c.name: np.full((c.height, c.width, 3), 128, np.uint8) for c in obs.cameras}
        return Observation(images=images, proprio=mean.copy())
    rng = np.random.default_rng(seed)
    images = {
        c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in obs.cameras
    }
    std = np.asarray(obs.proprio.std, dtype=np.float32)
    proprio = (mean + std * rng.standard_normal(mean.shape)).astype(np.float32)
    return Observation(images=images, proprio=proprio)


def compose_skills(
    basis: np.ndarray, active: np.ndarray, weights: np.ndarray, coeffs: np.ndarray
) -> np.ndarray:
    """Flow family: sum_j weights[j] * basis[active[j]] @ coeffs[j] -> flat chunk [H*A].

    ``basis`` [E, H*A, R] (orthonormal columns across experts), ``coeffs`` [k, R] the active
    skills' denoised coefficients; float64. With ``combination: unit`` (weights 1) this is
    the projection onto the active skills' span, what ``SMPModel`` trains.
    """
    b = np.asarray(basis, np.float64)[np.asarray(active, np.int64)]  # [k, H*A, R]
    w = np.asarray(weights, np.float64)
    return np.einsum("j,jmr,jr->m", w, b, np.asarray(coeffs, np.float64))


#: rtc: largest gathered expert weights (bytes, estimated from the stage file) for which the
#: finite-difference rows share one expert-stage call
RTC_BATCH_BYTES = 32 * 1024 * 1024


def _ms(t0: int, t1: int) -> float:
    return (t1 - t0) / 1e6


class MoEPolicy:
    """Runs a verified bundle on a backend; implements :class:`Policy`."""

    def __init__(
        self,
        bundle: LoadedBundle,
        backend: Backend,
        routing: RoutingConfig | None = None,
        seed: int = 0,
        gather_once: bool = True,
    ) -> None:
        m = bundle.manifest
        self.bundle = bundle
        self.manifest = m
        self.backend = backend
        self.seed = int(seed)
        self.num_experts = m.experts.count
        if m.is_flow:
            assert m.sampler is not None  # the manifest schema admits only flow_euler
            self.steps = m.sampler.steps
            self.rank = m.sampler.rank
        self.routing_config = merge_routing(m.routing, routing)
        self.combination = m.combination_weights
        self.strategy: RoutingStrategy = make_strategy(
            self.routing_config, self.num_experts, self.combination
        )

        contract = graph_contract(m)
        self.stages: dict[str, Stage] = {}
        for name in ("encoder", "experts"):
            stage = backend.load_stage(bundle, name)
            want_in = sorted(t.name for t in contract[name].inputs)
            want_out = sorted(t.name for t in contract[name].outputs)
            if sorted(stage.input_names) != want_in or sorted(stage.output_names) != want_out:
                raise BundleError(
                    f"{bundle.stage_path(name)}: {backend.name} stage {name!r} has inputs "
                    f"{stage.input_names} / outputs {stage.output_names}; expected {want_in} / "
                    f"{want_out}"
                )
            self.stages[name] = stage
        self.gather_once = bool(gather_once) and self._hoist_flow_experts(bundle, backend)

        cams = m.observation.cameras
        self._cams = [(c.name, c.height, c.width) for c in cams]
        self._img_scale = {
            c.name: (1.0 / (255.0 * np.asarray(c.std, np.float32))).reshape(3, 1, 1)
            for c in cams
        }
        self._img_offset = {
            c.name: (-np.asarray(c.mean, np.float32) / np.asarray(c.std, np.float32)).reshape(
                3, 1, 1
            )
            for c in cams
        }
        p = m.observation.proprio
        self._p_joints = p.joints
        self._p_mean = np.asarray(p.mean, np.float32)
        self._p_std = np.asarray(p.std, np.float32)
        self._a_mean = np.asarray(m.action.mean, np.float64)
        self._a_std = np.asarray(m.action.std, np.float64)
        self._rng = np.random.default_rng(self.seed)
        self._rtc_checked = False
        self._expert_file_bytes = bundle.stage_path("experts").stat().st_size / self.num_experts

    def _hoist_flow_experts(self, bundle: LoadedBundle, backend: Backend) -> bool:
        """Flow family on ONNX Runtime CPU: gather the active experts' weights (and every other
        per-chunk value) once per chunk, not per flow step (``core/backends/ort_hoist.py``).
        Returns whether it did; other backends keep the per-call graph."""
        from moe_policy_ros.core.backends.ort import OrtBackend, OrtStage

        stage = self.stages["experts"]
        if not (
            self.manifest.is_flow
            and isinstance(backend, OrtBackend)
            and backend.provider == "cpu"
            and isinstance(stage, OrtStage)
        ):
            return False
        from moe_policy_ros.core.backends.ort_hoist import HoistedStage

        self.stages["experts"] = HoistedStage(
            bundle.stage_path("experts"),
            stage.session.get_session_options(),
            {"context", "expert_idx"},
            expected_sha256=self.manifest.stages["experts"].sha256,
        )
        return True

    # ------------------------------------------------------------------ lifecycle

    def reset(self) -> None:
        """Forget routing state (sticky incumbents, switch tracking) and restart the noise."""
        self.strategy.reset()
        self._rng = np.random.default_rng(self.seed)

    def warmup(self, n: int = 3) -> list[float]:
        """Run ``n`` chunks on a synthetic observation and the expert stage once per k = 1..E
        (so every active-set size has run once), then :meth:`reset`. Returns total ms per chunk.
        """
        totals: list[float] = []
        if n <= 0:
            return totals
        obs = synthetic_observation(self.manifest)
        for _ in range(n):
            totals.append(self.infer(obs).timings_ms["total"])
        ctx = np.zeros((1, self.manifest.context_dim), np.float32)
        for k in range(1, self.num_experts + 1):
            idx = np.arange(k, dtype=np.int64)
            if self.manifest.is_flow:
                x = np.zeros((1, k, self.rank), np.float32)
                self.stages["experts"].run(
                    {"context": ctx, "expert_idx": idx, "x_t": x, "t": np.zeros(1, np.float32)}
                )
            else:
                w = np.full(k, 1.0 / k, np.float32)
                self.stages["experts"].run(
                    {"context": ctx, "expert_idx": idx, "expert_weights": w}
                )
        self.reset()
        return totals

    # ------------------------------------------------------------------ preprocessing

    def _preprocess(self, obs: Observation) -> dict[str, np.ndarray]:
        if not isinstance(obs, Observation):
            raise ObservationError(f"expected an Observation, got {type(obs).__name__}")
        images = obs.images if obs.images is not None else {}
        want = [c[0] for c in self._cams]
        missing = [n for n in want if n not in images]
        extra = sorted(n for n in images if n not in want)
        if missing or extra:
            raise ObservationError(
                f"observation cameras {sorted(images)} do not match the bundle's {want}"
                + (f": missing {missing}" if missing else "")
                + (f": unexpected {extra}" if extra else "")
            )
        feeds: dict[str, np.ndarray] = {}
        for name, h, w in self._cams:
            img = images[name]
            if not isinstance(img, np.ndarray):
                raise ObservationError(
                    f"image {name!r}: expected a numpy array, got {type(img).__name__}"
                )
            if img.dtype != np.uint8:
                raise ObservationError(f"image {name!r}: dtype must be uint8, got {img.dtype}")
            if img.shape != (h, w, 3):
                raise ObservationError(
                    f"image {name!r}: shape must be {(h, w, 3)} (HxWx3 RGB at the bundle's "
                    f"size), got {img.shape}"
                )
            chw = img.transpose(2, 0, 1).astype(np.float32)
            x = chw * self._img_scale[name] + self._img_offset[name]
            feeds[f"image_{name}"] = x[None]
        try:
            q = np.asarray(obs.proprio, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ObservationError(f"proprio: not numeric ({err})") from None
        n = len(self._p_joints)
        if q.shape != (n,):
            raise ObservationError(
                f"proprio: expected shape ({n},) for joints {list(self._p_joints)}, got {q.shape}"
            )
        bad = np.flatnonzero(~np.isfinite(q))
        if bad.size:
            i = int(bad[0])
            raise ObservationError(
                f"proprio[{i}] (joint {self._p_joints[i]!r}) is {q[i]} (must be finite)"
                + (f"; {bad.size} non-finite values in all" if bad.size > 1 else "")
            )
        feeds["proprio"] = ((q.astype(np.float32) - self._p_mean) / self._p_std)[None]
        return feeds

    # ------------------------------------------------------------------ inference

    def _router_outputs(self, enc: dict[str, np.ndarray]) -> RouterOutputs:
        def row(name: str) -> np.ndarray | None:
            v = enc.get(name)
            return None if v is None else np.asarray(v[0])

        gl = row("gate_logits")
        assert gl is not None
        return RouterOutputs(
            gate_logits=gl,
            adapter_weights=row("adapter_weights"),
            energies=row("energies"),
            latent=row("latent"),
        )

    def _experts(
        self,
        enc: dict[str, np.ndarray],
        decision: RoutingDecision,
        guidance: RtcGuidance | None = None,
    ) -> np.ndarray:
        context = enc["context"]
        idx = np.ascontiguousarray(decision.active, dtype=np.int64)
        w = np.ascontiguousarray(decision.weights, dtype=np.float32)
        stage = self.stages["experts"]
        if not self.manifest.is_flow:
            out = stage.run({"context": context, "expert_idx": idx, "expert_weights": w})
            return np.asarray(out["actions"][0], dtype=np.float64)
        noise = self._rng.standard_normal((self.num_experts, self.rank), dtype=np.float32)
        if guidance is not None:
            return self._guided(enc, idx, w, noise[idx], guidance)
        x = noise[idx][None]  # [1, k, R]
        dt = 1.0 / self.steps
        for s in range(self.steps):
            t = np.array([s * dt], np.float32)
            v = stage.run({"context": context, "expert_idx": idx, "x_t": x, "t": t})["velocity"]
            x = (x + np.float32(dt) * v).astype(np.float32)
        flat = compose_skills(enc["basis"][0], idx, w, x[0])
        return flat.reshape(self.manifest.action.chunk_length, self.manifest.action.dim)

    def _guided(
        self,
        enc: dict[str, np.ndarray],
        idx: np.ndarray,
        w: np.ndarray,
        x0: np.ndarray,
        g: RtcGuidance,
    ) -> np.ndarray:
        """The RTC-guided sampler (``core/rtc.py``) in model space; returns [H, A]."""
        h, a = self.manifest.action.chunk_length, self.manifest.action.dim
        y = np.asarray(g.committed, np.float64)
        if y.shape[1] != a:
            raise ValueError(f"rtc: committed actions have {y.shape[1]} columns, action dim {a}")
        if g.execution_horizon >= h:
            raise ValueError(
                f"rtc: execution_horizon {g.execution_horizon} must be < the chunk length {h}"
            )
        n = min(y.shape[0], h)
        target = np.zeros((h, a), np.float64)
        target[:n] = (y[:n] - self._a_mean) / self._a_std
        mask = np.repeat(soft_mask(h, g.delay_steps, g.execution_horizon, n), a)
        stage = self.stages["experts"]
        context = enc["context"]

        k = idx.shape[0]
        tiled: dict[int, np.ndarray] = {}

        # Rows beyond k are copies of the active set (the FD perturbations). One call for all
        # rows saves per-call overhead but gathers the active weights once per copy: above
        # RTC_BATCH_BYTES of gathered weights, one call per copy instead.
        per_copy = k * self._expert_file_bytes

        def velocity(x: np.ndarray, tau: float) -> np.ndarray:
            reps = x.shape[0] // k
            if reps > 1 and reps * per_copy > RTC_BATCH_BYTES:
                return np.concatenate([velocity(x[i * k : (i + 1) * k], tau) for i in range(reps)])
            if reps not in tiled:
                tiled[reps] = np.ascontiguousarray(np.tile(idx, reps))
            feeds = {
                "context": context,
                "expert_idx": tiled[reps],
                "x_t": np.ascontiguousarray(x, np.float32)[None],
                "t": np.array([tau], np.float32),
            }
            return np.asarray(stage.run(feeds)["velocity"][0], np.float32)

        if not self._rtc_checked:
            leak = check_block_diagonal(velocity, x0)
            if leak > 1e-5:
                raise ValueError(
                    f"rtc: bundle {self.manifest.name!r}: an expert's velocity changes by "
                    f"{leak:.3g} when another expert's input moves; the finite-difference "
                    "VJP needs experts that see only their own coefficients"
                )
            self._rtc_checked = True
        basis = np.asarray(enc["basis"][0])[idx]
        x1 = guided_flow_sample(
            velocity, x0, self.steps, basis, w, target.reshape(-1), mask,
            g.max_guidance_weight, g.fd_eps,
        )  # fmt: skip
        chunk = compose_skills(enc["basis"][0], idx, w, x1).reshape(h, a)
        if g.residual_blend:  # what the chunk's span could not reach, blended in (core/rtc)
            chunk = chunk + mask.reshape(h, a) * (target - chunk)
        return chunk

    def infer(self, obs: Observation, guidance: RtcGuidance | None = None) -> PolicyOutput:
        """One chunk; ``guidance`` (flow family only) runs the RTC-guided sampler."""
        if guidance is not None and not self.manifest.is_flow:
            raise ValueError(
                f"rtc guidance needs a flow sampler; bundle {self.manifest.name!r} is family "
                f"{self.manifest.family!r} (use merge replace/blend/ensemble)"
            )
        t0 = time.perf_counter_ns()
        feeds = self._preprocess(obs)
        t1 = time.perf_counter_ns()
        enc = self.stages["encoder"].run(feeds)
        t2 = time.perf_counter_ns()
        decision = self.strategy.select(self._router_outputs(enc))
        t3 = time.perf_counter_ns()
        actions = self._experts(enc, decision, guidance)
        t4 = time.perf_counter_ns()
        actions = actions * self._a_std + self._a_mean
        t5 = time.perf_counter_ns()
        timings = {
            "preprocess": _ms(t0, t1),
            "encoder": _ms(t1, t2),
            "routing": _ms(t2, t3),
            "experts": _ms(t3, t4),
            "total": _ms(t0, t5),
        }
        return PolicyOutput(
            actions=actions, decision=decision, timings_ms=timings, stamp_ns=obs.stamp_ns
        )
