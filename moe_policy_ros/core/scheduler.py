"""Action-chunk scheduler keyed by integer control step (stream execution).

The policy produces chunks of H actions at the inference rate; the control loop needs one
command per control tick. The scheduler holds the recent chunks and answers "what is the
command for control step t?", merging chunks that overlap.

Design notes
------------
* **Keyed by control step, not by arrival.** A chunk is stored with the control step of the
  observation it was computed from (``start_step``): ``actions[i]`` is the command for step
  ``start_step + i``. Latency compensation falls out of this: a chunk stamped at step ``s``
  that arrives while the loop is at step ``s + 3`` is simply queried from ``s + 3`` on, so its
  first three (already stale) actions are never executed. No clock arithmetic is needed here;
  the caller converts stamps to steps once.
* **Merge modes** (``ExecutionConfig.merge``):

  - ``replace``: the newest chunk covering the step wins.
  - ``ensemble``: ACT temporal ensembling (Zhao et al. 2023). Every chunk covering the step
    contributes with weight ``exp(-ensemble_decay * i)`` where ``i`` is the chunk's age rank
    among the chunks covering that step, **oldest first** (``i = 0`` for the oldest), as in
    ACT's reference code; the result is the weighted mean. ``decay > 0`` favours older chunks
    (smooth, slower to react), ``decay = 0`` is a plain mean.
  - ``blend``: crossfade to the newest chunk over ``blend_steps`` steps, starting at the
    newest chunk's first *executed* step ``f`` (the first step at which :meth:`action_at`
    returned a value while it covered that step). At step ``t`` the command is
    ``(1 - a) * old + a * new`` with ``a = min(1, (t - f + 1) / blend_steps)``, so ``a`` ramps
    ``1/blend_steps .. 1``. ``old`` is what the scheduler would command without the newest
    chunk (the same rule applied to the older chunks), so a chunk that arrives mid-crossfade
    starts from the command actually being sent: bumpless. Where no older chunk covers ``t``,
    the newest chunk is used alone. A chunk superseded before it was ever executed is skipped
    in the crossfade (the robot never followed it).
  - ``rtc``: real-time chunking (``core/rtc.py``). The new chunk was sampled to agree with
    :meth:`committed` (the commands the robot executes while it is computed), so it replaces
    the old one from its first executed step, like ``replace``, without a crossfade that
    would average two plans. The inference side asks :meth:`committed` for the target and a
    :class:`DelayEstimator` for the frozen prefix ``d`` before it samples.

* **Invariants raise.** Wrong shapes, NaN/Inf actions and a ``start_step`` earlier than the
  newest chunk's (since the last :meth:`clear`) raise ``ValueError`` naming the value. A
  stale or out-of-order chunk is a bug upstream; silently reordering would hide it.
* **Bounded.** At most ``max_chunks`` chunks are kept (the oldest is dropped); :meth:`prune`
  drops chunks that end before a step. Chunks with H <= max_chunks * inference period cover
  every step that matters.
* **Thread safety.** The inference thread adds chunks while the control loop queries; every
  public method takes one ``threading.Lock`` and returns copies, never views.
* :meth:`action_at` is the *execution* query (the blend ramp starts at the first call that
  uses a chunk); call it once per control tick. :meth:`remaining` only inspects.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .config import ExecutionConfig

MergeMode = Literal["ensemble", "blend", "replace", "rtc"]

__all__ = ["ChunkScheduler", "DelayEstimator", "MergeMode"]


@dataclass
class _Chunk:
    start: int
    actions: np.ndarray  # float64 [H, A], owned (copied on add)
    first_exec: int | None = None

    @property
    def end(self) -> int:
        """One past the last covered step."""
        return self.start + int(self.actions.shape[0])

    def covers(self, step: int) -> bool:
        return self.start <= step < self.end


def _as_step(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer control step, got {value!r}")
    return int(value)


class ChunkScheduler:
    """Holds overlapping action chunks and answers the command for each control step."""

    def __init__(
        self,
        action_dim: int,
        merge: MergeMode = "ensemble",
        ensemble_decay: float = 0.01,
        blend_steps: int = 5,
        max_chunks: int = 8,
    ) -> None:
        if isinstance(action_dim, bool) or not isinstance(action_dim, (int, np.integer)):
            raise ValueError(f"action_dim must be an integer, got {action_dim!r}")
        if action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}")
        if merge not in ("ensemble", "blend", "replace", "rtc"):
            raise ValueError(
                f"merge must be 'ensemble', 'blend', 'replace' or 'rtc', got {merge!r}"
            )
        if not (
            isinstance(ensemble_decay, (int, float))
            and math.isfinite(ensemble_decay)
            and ensemble_decay >= 0
        ):
            raise ValueError(
                f"ensemble_decay must be a finite number >= 0, got {ensemble_decay!r}"
            )
        for name, v in (("blend_steps", blend_steps), ("max_chunks", max_chunks)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.action_dim = int(action_dim)
        self.merge: MergeMode = merge
        self.ensemble_decay = float(ensemble_decay)
        self.blend_steps = int(blend_steps)
        self.max_chunks = int(max_chunks)
        self._lock = threading.Lock()
        self._chunks: list[_Chunk] = []  # oldest first; starts non-decreasing
        self._newest_start: int | None = None

    @classmethod
    def from_config(
        cls, cfg: ExecutionConfig, action_dim: int, max_chunks: int = 8
    ) -> ChunkScheduler:
        """A scheduler with the merge settings of an :class:`ExecutionConfig`."""
        return cls(action_dim, cfg.merge, cfg.ensemble_decay, cfg.blend_steps, max_chunks)

    # ------------------------------------------------------------------ writers

    def add_chunk(self, start_step: int, actions: np.ndarray) -> None:
        """Add a chunk: ``actions[i]`` is the command for control step ``start_step + i``.

        In ``rtc`` mode chunks must come through :meth:`add_guided_chunk`: an unguided chunk
        there would be a plain ``replace`` without anyone noticing, so it raises.
        """
        if self.merge == "rtc":
            raise ValueError(
                "merge 'rtc' takes chunks sampled with RTC guidance (add_guided_chunk, from "
                "MoEPolicy.infer(obs, guidance=...)); this chunk came without it"
            )
        self._add(start_step, actions)

    def add_guided_chunk(self, start_step: int, actions: np.ndarray) -> None:
        """Add a chunk sampled with RTC guidance toward :meth:`committed` (any merge mode)."""
        self._add(start_step, actions)

    def _add(self, start_step: int, actions: np.ndarray) -> None:
        start = _as_step("start_step", start_step)
        arr = np.asarray(actions)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != self.action_dim:
            raise ValueError(
                f"actions must have shape [H >= 1, {self.action_dim}], got {arr.shape}"
            )
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"actions must be numeric, got dtype {arr.dtype}")
        data = arr.astype(np.float64)  # always a copy: the caller may reuse its buffer
        bad = np.argwhere(~np.isfinite(data))
        if bad.size:
            i, j = (int(x) for x in bad[0])
            raise ValueError(
                f"actions[{i}, {j}] is {data[i, j]} (must be finite); "
                f"{bad.shape[0]} non-finite value(s) in the chunk starting at step {start}"
            )
        with self._lock:
            if self._newest_start is not None and start < self._newest_start:
                raise ValueError(
                    f"start_step {start} goes backwards: the newest chunk starts at "
                    f"{self._newest_start}"
                )
            self._chunks.append(_Chunk(start, data))
            self._newest_start = start
            del self._chunks[: max(0, len(self._chunks) - self.max_chunks)]

    def prune(self, step: int) -> None:
        """Drop chunks that cover no step at or after ``step``."""
        t = _as_step("step", step)
        with self._lock:
            self._chunks = [c for c in self._chunks if c.end > t]

    def keep_newest(self, start_step: int | None = None) -> bool:
        """Drop every chunk but the newest; ``start_step`` moves it there (its first action
        becomes that step's command, not yet executed). False when there is no chunk."""
        start = None if start_step is None else _as_step("start_step", start_step)
        with self._lock:
            if not self._chunks:
                return False
            newest = self._chunks[-1]
            if start is not None:
                newest.start, newest.first_exec = start, None
                self._newest_start = start
            self._chunks = [newest]
            return True

    def clear(self) -> None:
        """Drop every chunk and forget the newest start (a new episode may restart steps)."""
        with self._lock:
            self._chunks = []
            self._newest_start = None

    # ------------------------------------------------------------------ readers

    @property
    def newest_start(self) -> int | None:
        """Start step of the newest chunk added since the last clear (None if none)."""
        with self._lock:
            return self._newest_start

    def __len__(self) -> int:
        with self._lock:
            return len(self._chunks)

    def remaining(self, step: int) -> int:
        """Number of consecutive steps from ``step`` on that some chunk covers (0 if none)."""
        t = _as_step("step", step)
        with self._lock:
            covered_to = t
            for c in self._chunks:  # starts are non-decreasing
                if c.start > covered_to:
                    break
                covered_to = max(covered_to, c.end)
            return covered_to - t

    def action_at(self, step: int) -> np.ndarray | None:
        """The merged command (float64 [A]) for control ``step``; None if no chunk covers it."""
        t = _as_step("step", step)
        with self._lock:
            covering = [c for c in self._chunks if c.covers(t)]
            if not covering:
                return None
            newest = covering[-1]
            if newest.first_exec is None:
                newest.first_exec = t
            if self.merge in ("replace", "rtc"):
                out = newest.actions[t - newest.start]
            elif self.merge == "ensemble":
                out = self._ensemble(covering, t)
            else:
                out = self._blend(t)
            return np.array(out, dtype=np.float64)

    def committed(self, step: int, horizon: int) -> np.ndarray:
        """The commands the held chunks give for steps ``step .. step + n - 1`` (float64
        [n, A], ``n <= horizon`` consecutive covered steps; [0, A] if none covers ``step``).

        The rtc target: what the robot executes from ``step`` on if no newer chunk arrives.
        Same merge rule as :meth:`action_at` but without its side effect (a chunk not yet
        executed counts as starting now); ``step`` is the new chunk's start step.
        """
        t0 = _as_step("step", step)
        n = _as_step("horizon", horizon)
        if n < 0:
            raise ValueError(f"horizon must be >= 0, got {n}")
        rows: list[np.ndarray] = []
        with self._lock:
            for t in range(t0, t0 + n):
                covering = [c for c in self._chunks if c.covers(t)]
                if not covering:
                    break
                newest = covering[-1]
                if self.merge in ("replace", "rtc"):
                    rows.append(newest.actions[t - newest.start])
                elif self.merge == "ensemble":
                    rows.append(self._ensemble(covering, t))
                else:
                    rows.append(self._blend(t, assume_start=t0))
        if not rows:
            return np.zeros((0, self.action_dim), np.float64)
        return np.array(rows, dtype=np.float64)

    # ------------------------------------------------------------------ merging

    def _ensemble(self, covering: list[_Chunk], t: int) -> np.ndarray:
        w = np.exp(-self.ensemble_decay * np.arange(len(covering), dtype=np.float64))
        rows = np.stack([c.actions[t - c.start] for c in covering])
        return np.asarray(w @ rows / np.sum(w))

    def _blend(self, t: int, assume_start: int | None = None) -> np.ndarray:
        # Chunks superseded before they were ever executed take no part in the crossfade.
        # ``assume_start`` (committed): the newest chunk counts as first executed there.
        chain = [c for c in self._chunks[:-1] if c.first_exec is not None]
        chain.append(self._chunks[-1])
        value: np.ndarray | None = None
        for c in chain:  # oldest first: fold each newer chunk over what it replaces
            if not c.covers(t):
                continue
            new = c.actions[t - c.start]
            first = c.first_exec
            if first is None and c is chain[-1] and assume_start is not None:
                first = max(assume_start, c.start)
            if value is None or first is None:
                value = new
                continue
            alpha = min(1.0, max(0.0, (t - first + 1) / self.blend_steps))
            value = (1.0 - alpha) * value + alpha * new
        assert value is not None  # action_at checked that some chunk covers t
        return value


class DelayEstimator:
    """The frozen prefix ``d`` for rtc: the largest recent inference delay in control steps.

    The delay of a chunk is the number of control steps between its observation step (its
    ``start_step``) and the first step at which the control loop could execute it. RTC needs
    an upper bound: an underestimate leaves committed commands unfrozen and the new chunk may
    disagree with what already ran; an overestimate only freezes a little more. So the
    estimate is the maximum over the last ``window`` delays (``initial`` before any).
    """

    def __init__(self, window: int = 10, initial: int = 0) -> None:
        for name, v in (("window", window), ("initial", initial)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = int(window)
        self.initial = int(initial)
        self._lock = threading.Lock()
        self._delays: list[int] = []

    def record(self, delay_steps: int) -> None:
        """Add one measured delay (control steps, >= 0)."""
        d = _as_step("delay_steps", delay_steps)
        if d < 0:
            raise ValueError(f"delay_steps must be >= 0, got {d}")
        with self._lock:
            self._delays.append(d)
            del self._delays[: max(0, len(self._delays) - self.window)]

    def estimate(self) -> int:
        with self._lock:
            return max(self._delays) if self._delays else self.initial

    def reset(self) -> None:
        with self._lock:
            self._delays = []
