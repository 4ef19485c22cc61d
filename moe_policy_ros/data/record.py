"""`moe-policy-ros record`: scripted demonstrations replayed in the joint-space sim, to HDF5.

For each seed from ``--seed-start`` on: :func:`scripted.plan` turns the task's end-effector
script into joint commands in the mocap scene; :class:`AlohaSim` (the physics ``aloha_sim``
runs) is reset to the same seed and the commands are replayed, one per control step
(``1 / fps`` s of physics each), recording before each step the measured joints and the
``top`` camera rendered at ``--render-size`` and resized to ``--image-size`` with
:func:`core.imageconv.resize_to` (what the policy node does at run time). The recorded action
is the float32 command actually sent. A replay succeeds when the sim's success check
(gym-aloha's reward stage 4) holds at any step; only successful replays are kept (unless
``--keep-failed``), and seeds are tried until ``--episodes`` are kept.

Resuming. Episode files are written atomically and are the record of what was kept (their
``seed`` attr); ``meta.json`` is rewritten after every seed with the dropped seeds. Rerunning
the same command skips every seed already tried and continues; a different task, rate,
length, camera or image size for an existing directory is refused naming the field.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from moe_policy_ros.data.episodes import (
    EPISODE_RE,
    FORMAT,
    DatasetError,
    Episode,
    episode_path,
    read_meta,
    write_episode,
    write_meta,
)
from moe_policy_ros.sim.names import TASKS

RECORDER_VERSION = 2  # 2: the script's targets go through the runtime's control path
DEFAULT_STEPS = 400
DEFAULT_FPS = 50.0
DEFAULT_RENDER_SIZE = (480, 640)  # (H, W), what the aloha_sim node publishes
DEFAULT_IMAGE_SIZE = (120, 160)  # (H, W) stored, after resize_to
DEFAULT_PARAMS = "config/sim_dual_arm.yaml"


def _size(text: str) -> tuple[int, int]:
    """``HxW`` -> (H, W)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must be HxW, e.g. 120x160") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return h, w


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--episodes", type=int, required=True, help="successful episodes to keep")
    p.add_argument("--seed-start", type=int, default=0, help="first seed tried (default 0)")
    p.add_argument("--out", type=Path, required=True, help="dataset directory")
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"control steps per episode (default {DEFAULT_STEPS}; fewer time-compress the "
        "script, for tests)",
    )
    p.add_argument("--fps", type=float, default=DEFAULT_FPS, help="control rate (Hz)")
    p.add_argument(
        "--cameras", default="top", help="comma-separated scene cameras to record (default top)"
    )
    for flag, default, what in (
        ("--render-size", DEFAULT_RENDER_SIZE, "render size, as the aloha_sim node publishes"),
        ("--image-size", DEFAULT_IMAGE_SIZE, "stored image size after resize_to"),
    ):
        h, w = default
        p.add_argument(
            flag, type=_size, default=default, metavar="HxW", help=f"{what} (default {h}x{w})"
        )
    p.add_argument(
        "--max-seeds",
        type=int,
        default=None,
        help="give up after trying this many seeds in total (default 2 x episodes + 10)",
    )
    p.add_argument(
        "--keep-failed",
        action="store_true",
        help="also write episodes whose replay failed (success=False); for debugging",
    )
    p.add_argument(
        "--params",
        default=DEFAULT_PARAMS,
        help="parameter file whose handover and safety filter shape the commands, as the "
        f"policy node will (default {DEFAULT_PARAMS}, make demo's; 'none': the script's raw "
        "targets)",
    )
    p.add_argument(
        "--settle-s",
        type=float,
        default=0.0,
        help="seconds of physics at each reset before the episode, arms held, so that it "
        "starts with the objects at rest (they spawn 3 cm above the table; default 0)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass(frozen=True)
class RecordConfig:
    task: str
    steps: int = DEFAULT_STEPS
    fps: float = DEFAULT_FPS
    cameras: tuple[str, ...] = ("top",)
    render_size: tuple[int, int] = DEFAULT_RENDER_SIZE
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    keep_failed: bool = False
    # Parameter file whose robot limits, safety filter and handover shape the commands, as
    # the policy node will shape the policy's ("" = the script's targets unfiltered).
    params: str = ""
    # Physics run at each reset before the episode (objects at rest; AlohaSim.reset).
    settle_s: float = 0.0

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the directory's ``meta.json``
        (``settle_s`` only when set, so datasets recorded before it existed still resume)."""
        return {
            "task": self.task,
            "steps": self.steps,
            "fps": self.fps,
            "cameras": {c: list(self.image_size) for c in self.cameras},
            "render_size": list(self.render_size),
            "keep_failed": self.keep_failed,
            "params": self.params,
            **({"settle_s": self.settle_s} if self.settle_s else {}),
        }


@dataclass(frozen=True)
class Replay:
    episode: Episode
    success: bool
    first_success_step: int | None
    plan_s: float
    replay_s: float
    render_s: float


class Recorder:
    """Plans and replays seeds of one task; owns the two scenes and the renderers."""

    def __init__(self, cfg: RecordConfig) -> None:
        from moe_policy_ros.data import scripted
        from moe_policy_ros.sim.aloha import AlohaSim

        self.cfg = cfg
        self._scripted = scripted
        self.ee = scripted.EndEffectorSim(cfg.task)
        self.sim = AlohaSim(cfg.task, seed=0, settle_s=cfg.settle_s)
        h, w = cfg.render_size
        self.cams = {c: self.sim.camera(c, width=w, height=h) for c in cfg.cameras}
        self.control = _ControlPath(cfg.params, self.sim.joint_names, cfg.fps) if cfg.params \
            else None
        self.n_sub = round(1.0 / cfg.fps / self.sim.timestep)
        if self.n_sub < 1 or not math.isclose(self.n_sub * self.sim.timestep * cfg.fps, 1.0):
            raise ValueError(
                f"--fps {cfg.fps}: the control period is not a whole number of "
                f"{self.sim.timestep} s physics steps"
            )

    def close(self) -> None:
        for cam in self.cams.values():
            cam.close()

    def record(self, seed: int) -> Replay:
        from moe_policy_ros.core.imageconv import resize_to

        cfg, sim = self.cfg, self.sim
        t0 = time.perf_counter()
        plan = self._scripted.plan(cfg.task, seed, cfg.steps, cfg.fps, ee=self.ee)
        t1 = time.perf_counter()
        actions = plan.actions.astype(np.float32)
        n, j = actions.shape
        qpos = np.empty((n, j), np.float32)
        qvel = np.empty((n, j), np.float32)
        h, w = cfg.image_size
        images = {c: np.empty((n, h, w, 3), np.uint8) for c in cfg.cameras}
        sim.reset(seed)
        first: int | None = None
        render_s = 0.0
        control = self.control.start() if self.control is not None else None
        for t in range(n):
            qpos[t] = sim.joint_positions()
            qvel[t] = sim.joint_velocities()
            r0 = time.perf_counter()
            for c, cam in self.cams.items():
                images[c][t] = resize_to(cam.render(), (h, w))
            render_s += time.perf_counter() - r0
            if control is not None:  # what the runtime sends for the script's target
                actions[t] = control.step(qpos[t], actions[t], sim.targets)
            sim.set_targets(actions[t])  # exactly the stored command
            sim.step(self.n_sub)
            if first is None and sim.success():
                first = t
        ep = Episode(
            joint_names=tuple(sim.joint_names),
            qpos=qpos,
            action=actions,
            images=images,
            fps=cfg.fps,
            phase=plan.phase,
            phase_names=plan.phase_names,
            task=cfg.task,
            seed=seed,
            success=first is not None,
            qvel=qvel,
        )
        return Replay(ep, first is not None, first, t1 - t0, time.perf_counter() - t1, render_s)


class _ControlPath:
    """The policy node's command path (handover arbiter + safety filter of a parameter file)
    for the script's targets, so that a demonstration moves as the runtime moves the robot:
    engaged from HOLD with the handover blend, within the velocity, acceleration and
    deviation limits. The stored actions are the commands sent; a policy trained on them
    proposes commands the filter passes, and starts each episode as the demonstrations did."""

    def __init__(self, params: str, sim_joints: Sequence[str], fps: float) -> None:
        from moe_policy_ros.core.config import load_config
        from moe_policy_ros.core.paths import resolve_share_path

        self.cfg = cfg = load_config(resolve_share_path(params))
        robot = tuple(cfg.robot.joint_names)
        if sorted(robot) != sorted(sim_joints):
            raise ValueError(
                f"{params}: robot joints {sorted(set(robot) ^ set(sim_joints))} differ from the "
                "sim's; the recorder needs the sim's 14 joints"
            )
        self._to_robot = np.array([list(sim_joints).index(j) for j in robot])
        self._period_s = 1.0 / fps
        self._period_ns = round(self._period_s * 1e9)

    def start(self) -> _ControlPath:
        """A new episode: a fresh arbiter and filter in HOLD, on simulated time."""
        from moe_policy_ros.core.clock import FakeClock
        from moe_policy_ros.core.handover import CommandArbiter
        from moe_policy_ros.core.safety import SafetyFilter

        self._clock = FakeClock()
        self._arb = CommandArbiter(
            self.cfg.handover, SafetyFilter(self.cfg.robot, self.cfg.safety, self._period_s),
            self._clock,
        )
        self._engaged = False
        return self

    def step(self, measured: np.ndarray, target: np.ndarray, held: np.ndarray) -> np.ndarray:
        """The command (sim joint order) for the script's ``target`` at this control step, as
        the rollout's loop makes it: tick, then engage autonomy once a command exists."""
        from moe_policy_ros.core.handover import Mode, TickInputs

        r = self._to_robot
        tick = self._arb.tick(TickInputs(measured=np.asarray(measured, np.float64)[r],
                                         policy_command=np.asarray(target, np.float64)[r],
                                         policy_warm=True))
        if not self._engaged:
            ok, why = self._arb.engage_autonomy(True)
            if not ok:
                raise ValueError(f"the control path refused to engage: {why}")
            self._engaged = self._arb.mode == Mode.AUTONOMY
        self._clock.advance_ns(self._period_ns)
        out = np.array(held, np.float64)
        if tick.sent is not None:
            out[r] = tick.sent
        return out


def _kept_on_disk(out: Path) -> tuple[dict[int, int], list[int]]:
    """(episode index -> seed, seeds whose replay failed) from the episode files present.

    The files, not ``meta.json``, are the truth after a crash: each is renamed into place
    only once complete.
    """
    kept: dict[int, int] = {}
    failed: list[int] = []
    for p in out.iterdir():
        m = EPISODE_RE.match(p.name)
        if not m:
            continue
        try:
            with h5py.File(p, "r") as f:
                seed = int(f.attrs["seed"])
                ok = bool(f.attrs["success"])
        except (OSError, KeyError) as err:
            raise DatasetError(
                f"{p}: unreadable or without 'seed'/'success' attrs ({err}); remove it to resume"
            ) from err
        kept[int(m.group(1))] = seed
        if not ok:
            failed.append(seed)
    return kept, failed


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("mujoco", "gym-aloha", "h5py", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def record_dataset(
    cfg: RecordConfig,
    out: Path,
    episodes: int,
    seed_start: int = 0,
    max_seeds: int | None = None,
    progress: bool = True,
    log: Any = None,
) -> dict[str, Any]:
    """Record until ``episodes`` are kept (or ``max_seeds`` tried); returns the meta dict."""
    from tqdm import tqdm

    from moe_policy_ros.data import scripted

    if episodes < 1:
        raise ValueError(f"--episodes {episodes} must be >= 1")
    log = log if log is not None else (lambda msg: print(msg, file=sys.stderr, flush=True))
    max_seeds = max_seeds if max_seeds is not None else 2 * episodes + 10
    old = read_meta(out) if out.is_dir() else {}
    ident = cfg.identity()
    if old:
        # settle_s: 0 where a dataset recorded before it existed has none
        for key, val in {**ident, "seed_start": seed_start, "settle_s": cfg.settle_s}.items():
            have = old.get(key, 0.0 if key == "settle_s" else None)
            if have != val:
                raise DatasetError(
                    f"{out / 'meta.json'}: existing dataset has {key}={have!r}, this run "
                    f"asks for {val!r}; record into another directory"
                )
    kept, failed_kept = _kept_on_disk(out) if out.is_dir() else ({}, [])
    dropped: list[int] = [int(s) for s in old.get("seeds_dropped", [])]
    kept_seeds = set(kept.values())
    dropped = [s for s in dropped if s not in kept_seeds]
    tried = kept_seeds | set(dropped)
    wall = float(old.get("wall_time_s", 0.0))
    if kept and sorted(kept) != list(range(len(kept))):
        raise DatasetError(f"{out}: episode files are not numbered 0..{len(kept) - 1}")
    if tried:
        log(
            f"resuming {out}: {len(kept)} kept, {len(dropped)} dropped, seeds tried up to "
            f"{max(tried)}"
        )

    def meta() -> dict[str, Any]:
        n_tried = len(kept) + len(dropped)
        n_ok = len(kept) - len(failed_kept)
        return {
            **ident,
            "format": FORMAT,
            "recorder_version": RECORDER_VERSION,
            "joint_names": list(recorder.sim.joint_names),
            "image_size": list(cfg.image_size),
            "seed_start": seed_start,
            "episodes": [
                {"file": episode_path(out, i).name, "seed": kept[i]} for i in sorted(kept)
            ],
            "seeds_kept": [kept[i] for i in sorted(kept)],
            "seeds_dropped": sorted(dropped),
            "seeds_failed_kept": sorted(failed_kept),
            "seeds_tried": n_tried,
            "script_success_rate": (n_ok / n_tried) if n_tried else None,
            "script": {
                "transfer_cube": scripted.TRANSFER_KNOBS,
                "insertion": scripted.INSERTION_KNOBS,
            }[cfg.task],
            "tool_offset_m": scripted.TOOL_OFFSET_M,
            "physics_timestep_s": recorder.sim.timestep,
            "physics_steps_per_control": recorder.n_sub,
            "wall_time_s": round(wall, 1),
            "versions": _versions(),
        }

    recorder = Recorder(cfg)  # bad cameras or rates fail here, before anything is written
    try:
        out.mkdir(parents=True, exist_ok=True)
        seed = max(tried) + 1 if tried else seed_start
        bar = tqdm(
            total=episodes,
            initial=min(len(kept), episodes),
            unit="ep",
            desc=cfg.task,
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        with bar:
            while len(kept) < episodes:
                if len(kept) + len(dropped) >= max_seeds:
                    log(f"giving up: {max_seeds} seeds tried, {len(kept)}/{episodes} kept")
                    break
                t0 = time.perf_counter()
                r = recorder.record(seed)
                if r.success or cfg.keep_failed:
                    idx = len(kept)
                    write_episode(episode_path(out, idx), r.episode)
                    kept[idx] = seed
                    if not r.success:
                        failed_kept.append(seed)
                    bar.update(1)
                else:
                    dropped.append(seed)
                wall += time.perf_counter() - t0
                write_meta(out, meta())
                bar.set_postfix(seed=seed, dropped=len(dropped), refresh=False)
                if not progress:
                    log(
                        f"seed {seed}: {'ok' if r.success else 'FAILED'} "
                        f"(success at step {r.first_success_step}); plan {r.plan_s:.1f} s, "
                        f"replay {r.replay_s:.1f} s of which render {r.render_s:.1f} s"
                    )
                seed += 1
        final = meta()
        write_meta(out, final)
        return final
    finally:
        recorder.close()


def run(args: argparse.Namespace) -> int:
    cfg = RecordConfig(
        task=args.task,
        steps=args.steps,
        fps=args.fps,
        cameras=tuple(c.strip() for c in args.cameras.split(",") if c.strip()),
        render_size=tuple(args.render_size),
        image_size=tuple(args.image_size),
        keep_failed=args.keep_failed,
        params="" if args.params.lower() == "none" else args.params,
        settle_s=args.settle_s,
    )
    if not (math.isfinite(args.settle_s) and 0.0 <= args.settle_s <= 10.0):
        print(f"record: --settle-s {args.settle_s} must be within 0..10 s", file=sys.stderr)
        return 2
    if args.steps < 1:
        print(f"record: --steps {args.steps} must be >= 1", file=sys.stderr)
        return 2
    try:
        meta = record_dataset(
            cfg,
            args.out,
            args.episodes,
            args.seed_start,
            args.max_seeds,
            progress=not args.no_progress,
        )
    except (DatasetError, ValueError) as err:
        print(f"record: {err}", file=sys.stderr)
        return 2
    n_kept = len(meta["seeds_kept"])
    rate = meta["script_success_rate"]
    print(
        f"{cfg.task}: {n_kept} episodes in {args.out}; script success "
        f"{meta['seeds_tried'] - len(meta['seeds_dropped']) - len(meta['seeds_failed_kept'])}"
        f"/{meta['seeds_tried']} ({100 * (rate or 0):.0f}%), dropped seeds "
        f"{meta['seeds_dropped']}, wall {meta['wall_time_s']:.0f} s"
    )
    return 0 if n_kept >= args.episodes else 1
