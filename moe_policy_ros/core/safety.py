"""Safety filter applied to every outgoing joint command, in every mode.

The filter sits between whatever produced a command (policy, blend, teleop, hold) and the
controllers. Like LeRobot's ``Robot.send_action`` it returns the command *actually sent*;
the caller publishes exactly that and nothing else.

What it does, per control tick (``filter``)
-------------------------------------------
1. **Hazards that hold.** A command with NaN/Inf or the wrong shape (ERROR), measured joint
   positions unavailable (``joint_states`` stale: always holds, since the deviation bound
   cannot be enforced without them), stale inputs (when ``hold_on_stale_inputs``), no command
   at all (the chunk ran out; reported as ``overrun`` when an inference overrun is in
   effect, i.e. "finish the current chunk, then hold"), an overrun with
   ``overrun_action: hold``, an out-of-distribution observation with ``ood_action: hold``.
   Warnings that do not hold: an overrun while the current chunk still has actions, OOD with
   ``ood_action: warn``, stale inputs with ``hold_on_stale_inputs: false``.
2. **Hold = brake, never jump.** Holding does not snap to a stored position (that would be an
   infinite acceleration when the arm is moving). It decelerates the last sent command at the
   acceleration limit until it stops; the stop point is the hold position (``hold_position``)
   and is then commanded unchanged. With no command sent yet, the hold position is the
   measured position (clamped to the limits); with neither, nothing is sent (``sent`` None).
3. **Limits.** The proposed command is clamped to the position limits, then its step from the
   last sent command is limited, per joint, to the intersection of
   ``[s_prev - A dt^2, s_prev + A dt^2]`` (acceleration), ``[-V dt, V dt]`` (velocity) and a
   *braking bound* toward each position limit, where ``s_prev`` is the previous step,
   ``V = max_velocity * velocity_scale`` and ``A = max_acceleration * acceleration_scale``.
   Finally the result is clamped to ``measured +- max_position_deviation`` and again to the
   position limits.

The braking bound (why acceleration never has to give way to position limits)
-------------------------------------------------------------------------------
Clamping position alone would let a command run into a limit at full speed and stop in one
tick. Instead a step ``s`` toward a limit at distance ``g`` is allowed only if the command can
still stop in time decelerating by ``D = A dt^2`` per tick: the remaining distance of the
braking sequence ``s - D, s - 2D, ...`` is a right Riemann sum of a decreasing line, so it is at
most ``s^2 / (2 D)``; requiring ``s + s^2/(2D) <= g`` gives
``s <= brake(g) = 2 g / (1 + sqrt(1 + 2 g / D))`` (the cancellation-free form of
``D (sqrt(1 + 2g/D) - 1)``). If the previous step satisfied it, then ``s_prev - D`` satisfies it
at the next tick (``(s-D) + (s-D)^2/(2D) = s + s^2/(2D) - s - D/2 <= g - s``), so the
acceleration window always intersects the velocity and braking windows, and braking (hold)
is always feasible.

Exact guarantee (tested with randomized inputs, tolerance 1e-9 rad)
-------------------------------------------------------------------
For the commands ``q_k`` returned by one filter (no ``reset`` in between), per joint:

* ``q_k`` is finite and ``min_position <= q_k <= max_position``, always.
* ``|q_k - m_k| <= max_position_deviation`` whenever the measured position ``m_k`` is given and
  ``[m_k - dev, m_k + dev]`` meets the position range (otherwise position limits win).
* ``|q_k - q_{k-1}| <= V dt``, and ``|q_k - 2 q_{k-1} + q_{k-2}| <= A dt^2``, except on ticks
  where the deviation clamp acted on that joint (velocity: tick k; acceleration: ticks k and
  k-1). A deviation clamp only ever moves the command *toward* the measured robot, so the
  exception reduces the tracking error rather than adding motion; after it the joint's
  previous step is taken as zero (the re-anchored command starts from rest).
* The first command after construction or ``reset`` is taken relative to the measured position
  at rest (``q_{-1} = q_{-2} = clamp(m)``).

Commands that already respect the limits pass through unchanged (the filter is transparent).
Interventions are counted per kind, in control ticks on which they acted.

Setpoints between ticks (``revise``)
------------------------------------
Stream mode's early send (``execution.revise_on_arrival``) publishes, when a chunk arrives a
fraction ``f`` of a period after tick ``k``, the setpoint for that instant: ``r = q_k + f (F -
q_k)``, where ``F`` is what tick ``k+1`` would send for the new proposal from the current
state (every limit above applied; the state does not change). ``r`` lies on the segment to a
command that satisfies the guarantee as tick ``k+1``'s, so the setpoint path is the one the
ticks make, only sampled sooner. Tick ``k+1`` then keeps within ``(1 - f) A dt^2`` of ``F``
and within ``V (1 - f) dt`` of ``r`` (both windows contain ``F``, so they always meet the
others): on the setpoint path, the speed stays within ``V`` between any two messages and the
slope changes by at most ``A dt`` at the revision (``(1 + f) A dt`` at the tick after it);
the commands at the ticks keep the exact guarantee above. A second revision in the same
period goes on from the first (``r_2 = r_1 + (f_2 - f_1) / (1 - f_1) (F_2 - r_1)``, ``F_2``
within the first one's windows). ``revise`` refuses (None, nothing changed) when the last
tick held or had no anchor, when ``f`` is not after the period's last revision and below 1,
or when the proposal would hold (a hazard: the next tick decides that). Exceptions as above:
a deviation clamp may leave the windows.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .config import RobotConfig, SafetyConfig
from .types import Level

TOL = 1e-9  # rad; a clamp that moves a value less than this is not an intervention


# Intervention kinds, the keys of ``SafetyFilter.counts``.
INVALID = "invalid_command"  # NaN/Inf or wrong shape in the proposed command (ERROR, hold)
INVALID_MEASURED = "invalid_measured"  # NaN/Inf or wrong shape in measured positions (ERROR)
STALE = "stale_input"
NO_COMMAND = "no_command"
OVERRUN = "overrun"
OOD = "ood"
POSITION = "position_limit"
VELOCITY = "velocity_limit"
ACCELERATION = "acceleration_limit"
DEVIATION = "deviation_limit"
KINDS: tuple[str, ...] = (
    INVALID,
    INVALID_MEASURED,
    STALE,
    NO_COMMAND,
    OVERRUN,
    OOD,
    POSITION,
    VELOCITY,
    ACCELERATION,
    DEVIATION,
)


@dataclass(frozen=True)
class Intervention:
    """One thing the filter did to (or instead of) the proposed command on one tick."""

    kind: str
    level: Level
    message: str
    joints: tuple[str, ...] = ()
    hold: bool = False


@dataclass(frozen=True)
class FilterResult:
    """The outcome of one tick.

    ``sent`` is the command to publish (float64, robot joint order); None only when nothing can
    be sent (no command sent yet and no measured position). ``hold`` is True when ``sent`` is a
    hold (braking) command, whether requested by the caller or forced by a hazard;
    ``hazard_hold`` is True only for the latter. ``level``/``message`` summarise the tick.
    """

    sent: np.ndarray | None
    interventions: tuple[Intervention, ...]
    hold: bool
    level: Level
    message: str
    hazard_hold: bool = False

    def kinds(self) -> tuple[str, ...]:
        return tuple(i.kind for i in self.interventions)


def brake_step(gap: np.ndarray, decel_step: np.ndarray) -> np.ndarray:
    """Largest step toward a limit ``gap`` away that can still stop before it.

    ``decel_step`` is the per-tick change of step allowed by the acceleration limit
    (``A dt^2``). See the module docstring for the derivation.
    """
    g = np.maximum(gap, 0.0)
    return 2.0 * g / (1.0 + np.sqrt(1.0 + 2.0 * g / decel_step))


def stale_inputs(
    now_ns: int, stamps_ns: Mapping[str, int | None], max_age_s: Mapping[str, float]
) -> tuple[str, ...]:
    """Names of inputs older than their max age (or never received), sorted.

    A helper for the node: ``stamps_ns`` maps input name -> stamp of its latest sample on the
    same clock as ``now_ns`` (None = never received); ``max_age_s`` maps name -> limit.
    """
    out = []
    for name, limit in max_age_s.items():
        stamp = stamps_ns.get(name)
        if stamp is None or now_ns - stamp > round(limit * 1e9):
            out.append(name)
    return tuple(sorted(out))


def _names(mask: np.ndarray, names: Sequence[str]) -> tuple[str, ...]:
    idx = np.flatnonzero(mask)
    return tuple(names[int(i)] for i in idx)


def _cut_text(kind: str, unit: str, scale: float) -> Callable[[str, float], str]:
    """The message of a rate limit that cut a step (``by``: rad per step -> ``unit``)."""
    return lambda joints, by: (
        f"{kind.replace('_', ' ')} on {joints} (cut by up to {by / scale:.3g} {unit})"
    )


def _fmt_joints(joints: tuple[str, ...], limit: int = 4) -> str:
    if len(joints) <= limit:
        return ", ".join(joints)
    return ", ".join(joints[:limit]) + f" (+{len(joints) - limit} more)"


class SafetyFilter:
    """Limits, deviation, NaN, stale, overrun and OOD handling for every outgoing command.

    Thread-safe (one lock); meant to be called once per control tick from the control loop,
    usually through :class:`~moe_policy_ros.core.handover.CommandArbiter`.
    """

    def __init__(self, robot: RobotConfig, safety: SafetyConfig, control_period_s: float) -> None:
        if not (control_period_s > 0 and math.isfinite(control_period_s)):
            raise ValueError(
                f"control_period_s must be positive and finite, got {control_period_s}"
            )
        self.robot = robot
        self.cfg = safety
        self.dt = float(control_period_s)
        joints = robot.joints
        self.joint_names: tuple[str, ...] = tuple(j.name for j in joints)
        self.n = len(joints)
        self.q_min = np.array([j.min_position for j in joints], dtype=np.float64)
        self.q_max = np.array([j.max_position for j in joints], dtype=np.float64)
        self.v_max = np.array([j.max_velocity for j in joints]) * safety.velocity_scale
        self.a_max = np.array([j.max_acceleration for j in joints]) * safety.acceleration_scale
        self.max_step = self.v_max * self.dt  # rad per tick
        self.max_dstep = self.a_max * self.dt**2  # change of step per tick
        self._lock = threading.Lock()
        self._last: np.ndarray | None = None
        self._step = np.zeros(self.n)
        # this period's last revision: (fraction, setpoint sent, its next-tick command)
        self._revision: tuple[float, np.ndarray, np.ndarray] | None = None
        self._holding = False
        self._revisions = 0
        self._counts = dict.fromkeys(KINDS, 0)
        self._ticks = 0
        self._holds_entered = 0
        self._worst: tuple[Level, str] = (Level.OK, "ok")
        self._last_result: FilterResult | None = None

    # ------------------------------------------------------------------ state

    @property
    def last_sent(self) -> np.ndarray | None:
        with self._lock:
            return None if self._last is None else self._last.copy()

    @property
    def last_step(self) -> np.ndarray:
        """Previous step of the sent command (rad per tick); zeros after ``reset``."""
        with self._lock:
            return self._step.copy()

    @property
    def holding(self) -> bool:
        with self._lock:
            return self._holding

    @property
    def hold_position(self) -> np.ndarray | None:
        """Where a hold started now would stop: the last sent command plus braking distance."""
        with self._lock:
            if self._last is None:
                return None
            q = self._last.copy()
            s = self._step.copy()
            while np.any(s != 0.0):
                s = np.sign(s) * np.maximum(np.abs(s) - self.max_dstep, 0.0)
                q = q + s
            return np.clip(q, self.q_min, self.q_max)

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        """Forget the last sent command (e.g. on activate); counters are kept."""
        with self._lock:
            self._last = None
            self._step = np.zeros(self.n)
            self._revision = None
            self._holding = False

    # ------------------------------------------------------------------ filter

    def bounded_step(
        self, last: np.ndarray, s_prev: np.ndarray, desired: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The step actually allowed from ``last`` (previous step ``s_prev``) toward
        ``last + desired``: clipped by the acceleration bound, then the velocity bound, then
        the braking bound toward the position limits. Returns the three stages (the filter
        reports which one acted)."""
        step_a = np.clip(desired, s_prev - self.max_dstep, s_prev + self.max_dstep)
        step_v = np.clip(step_a, -self.max_step, self.max_step)
        lo = -brake_step(last - self.q_min, self.max_dstep)
        hi = brake_step(self.q_max - last, self.max_dstep)
        return step_a, step_v, np.clip(step_v, lo, hi)

    def _vector(self, x: object) -> np.ndarray | None:
        """``x`` as a float64 vector of the robot's length, or None if malformed/non-finite."""
        try:
            a = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError):
            return None
        if a.shape != (self.n,) or not np.all(np.isfinite(a)):
            return None
        return a

    def filter(
        self,
        proposed: np.ndarray | None,
        measured: np.ndarray | None,
        *,
        stale: Sequence[str] = (),
        overrun: bool = False,
        ood_energy: float | None = None,
        hold_reason: str = "",
    ) -> FilterResult:
        """Filter one proposed command; returns what to send.

        ``proposed``: full joint vector in robot joint order, or None when there is no command
        (chunk exhausted). ``measured``: measured positions, None when unavailable or stale.
        ``stale``: names of other inputs older than their max age (they hold when
        ``hold_on_stale_inputs``). ``overrun``: an inference overrun is in effect.
        ``ood_energy``: novelty score (e.g. Di-BM minimum expert energy), None = not
        available. ``hold_reason``: non-empty to request a hold (mode HOLD/ESTOP); the
        proposal is then ignored and no intervention is counted for it.
        """
        with self._lock:
            return self._filter(proposed, measured, stale, overrun, ood_energy, hold_reason)

    def _filter(
        self,
        proposed: np.ndarray | None,
        measured: np.ndarray | None,
        stale: Sequence[str],
        overrun: bool,
        ood_energy: float | None,
        hold_reason: str,
    ) -> FilterResult:
        """Hazard checks (each may hold), then the limits; a hazard is an intervention that
        holds, so ``hazard`` is derived from the interventions, never tracked beside them."""
        m, p, ivs = self._checks(proposed, measured, stale, overrun, ood_energy, hold_reason)
        hazard = any(iv.hold for iv in ivs)

        # anchor: the previous sent command, or the measured position at rest
        if self._last is None:
            if m is None:
                return self._finish(None, ivs, hazard, hold_reason)
            self._last = np.clip(m, self.q_min, self.q_max)
            self._step = np.zeros(self.n)
        return self._commit(p, m, ivs, hazard, hold_reason)

    def _checks(
        self, proposed: object, measured: object, stale: Sequence[str], overrun: bool,
        ood_energy: float | None, hold_reason: str,
    ) -> tuple[np.ndarray | None, np.ndarray | None, list[Intervention]]:
        """The measured and proposed vectors (None: unusable) and the hazard checks' findings."""
        m = None if measured is None else self._vector(measured)
        p = None if hold_reason or proposed is None else self._vector(proposed)
        checks = [self._check_measured(measured, m), self._check_stale(stale)]
        if not hold_reason:  # the proposal counts only when the caller does not ask to hold
            checks += [self._check_command(proposed, p, overrun), self._check_ood(ood_energy)]
        return m, p, [iv for iv in checks if iv is not None]

    def _commit(
        self, p: np.ndarray | None, m: np.ndarray | None, ivs: list[Intervention],
        hazard: bool, hold_reason: str,
    ) -> FilterResult:
        """Limit ``p`` from the anchored state (brake instead when holding) and make it the
        last command: the tick ends the period (and its revisions)."""
        last = self._last
        assert last is not None
        q, frozen = self._limited(None if hazard or hold_reason else p, m, ivs)
        new_step = q - last
        new_step[frozen] = 0.0
        self._step = new_step
        self._last = q
        self._revision = None
        return self._finish(q.copy(), ivs, hazard, hold_reason)

    def revise(
        self,
        proposed: np.ndarray,
        measured: np.ndarray | None,
        fraction: float,
        *,
        stale: Sequence[str] = (),
        overrun: bool = False,
        ood_energy: float | None = None,
    ) -> FilterResult | None:
        """The setpoint ``fraction`` of a period after the last tick, on the way to the
        command the next tick would send for ``proposed`` (module docstring, "Setpoints
        between ticks"); the next tick keeps to that way.

        None, with nothing changed, when the last tick held or had no anchor, when
        ``fraction`` is not after this period's last revision and below 1, or when the
        proposal would hold (a hazard: the next tick holds then).
        """
        with self._lock:
            last = self._last
            if last is None or self._holding:
                return None
            f = float(fraction)
            if self._revision is None:
                f0, r0 = 0.0, last
                if not 0.0 <= f < 1.0:
                    return None
            else:
                f0, r0, _aim = self._revision
                if not f0 < f < 1.0:
                    return None
            m, p, ivs = self._checks(proposed, measured, stale, overrun, ood_energy, "")
            if any(iv.hold for iv in ivs):
                return None
            target, _frozen = self._limited(p, m, ivs)
            r = r0 + (f - f0) / (1.0 - f0) * (target - r0)
            self._revision = (f, r, target)
            self._revisions += 1
            return self._finish(r.copy(), ivs, False, "", revision=True)

    # ------------------------------------------------------------------ hazard checks

    def _check_measured(self, measured: object, m: np.ndarray | None) -> Intervention | None:
        if measured is None:
            return Intervention(
                STALE, Level.WARN,
                "measured joint positions unavailable (joint_states stale): holding",
                ("joint_states",), hold=True,
            )
        if m is None:
            return Intervention(
                INVALID_MEASURED, Level.ERROR,
                f"measured positions are not {self.n} finite values: holding", hold=True,
            )
        return None

    def _check_stale(self, stale: Sequence[str]) -> Intervention | None:
        if not stale:
            return None
        hold = self.cfg.hold_on_stale_inputs
        names = tuple(stale)
        return Intervention(
            STALE, Level.WARN,
            f"inputs stale: {', '.join(names)}" + (": holding" if hold else ""), names, hold,
        )

    def _check_command(
        self, proposed: object, p: np.ndarray | None, overrun: bool
    ) -> Intervention | None:
        if proposed is None and overrun:
            return Intervention(OVERRUN, Level.WARN,
                                "inference overrun: current chunk finished, holding", hold=True)
        if proposed is None:
            return Intervention(NO_COMMAND, Level.WARN, "no command available: holding",
                                hold=True)
        if p is None:
            return Intervention(
                INVALID, Level.ERROR,
                f"command contains NaN/Inf or is not {self.n} values: holding", hold=True,
            )
        if overrun:
            hold = self.cfg.overrun_action == "hold"
            return Intervention(
                OVERRUN, Level.WARN,
                "inference overrun: holding" if hold
                else "inference overrun: finishing the current chunk",
                hold=hold,
            )
        return None

    def _check_ood(self, ood_energy: float | None) -> Intervention | None:
        cfg = self.cfg
        if ood_energy is None or cfg.ood_action == "ignore":
            return None
        e = float(ood_energy)
        if e <= cfg.ood_energy_threshold:  # NaN counts as out of distribution
            return None
        hold = cfg.ood_action == "hold"
        return Intervention(
            OOD, Level.WARN,
            f"observation out of distribution (energy {e:.3g} > "
            f"{cfg.ood_energy_threshold:.3g})" + (": holding" if hold else ""),
            hold=hold,
        )

    # ------------------------------------------------------------------ limits

    def _limited(
        self, p: np.ndarray | None, m: np.ndarray | None, ivs: list[Intervention]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The command after every limit, and the joints the deviation limit froze.

        ``p`` None brakes to a stop (a hold). Each limit that acts is noted in ``ivs``.
        """
        assert self._last is not None
        last, s_prev = self._last, self._step
        if p is None:
            desired = np.sign(s_prev) * np.maximum(np.abs(s_prev) - self.max_dstep, 0.0)
        else:
            clamped = np.clip(p, self.q_min, self.q_max)
            self._note(ivs, POSITION, p, clamped,
                       lambda js, by: f"position limit on {js} (by up to {by:.3g} rad)")
            desired = clamped - last

        # acceleration, then velocity and braking toward the position limits
        step_a, step_v, step = self.bounded_step(last, s_prev, desired)
        if p is not None:
            for kind, before, after, unit, scale in (
                (ACCELERATION, desired, step_a, "rad/s^2", self.dt**2),
                (VELOCITY, step_a, step_v, "rad/s", self.dt),
                (POSITION, step_v, step, "rad/s (braking before the limit)", self.dt),
            ):
                self._note(ivs, kind, before, after, _cut_text(kind, unit, scale))
        q = np.clip(last + step, self.q_min, self.q_max)
        if self._revision is not None:  # keep to the way this period's revision set out on
            q = self._keep_to_revision(q, ivs if p is not None else None)

        # deviation from the measured position (position limits win)
        frozen = np.zeros(self.n, dtype=bool)
        if m is not None:
            d = self.cfg.max_position_deviation
            qd = np.clip(q, m - d, m + d)
            frozen = self._note(ivs, DEVIATION, q, qd,
                                lambda js, _by: f"deviation from measured limited to {d:.3g} "
                                f"rad on {js}")
            q = np.clip(qd, self.q_min, self.q_max)
        return q, frozen

    def _keep_to_revision(
        self, q: np.ndarray, ivs: list[Intervention] | None
    ) -> np.ndarray:
        """``q`` within ``(1 - f) A dt^2`` of the command the revision aimed at and within
        ``V (1 - f) dt`` of the setpoint it sent (module docstring); a joint whose windows do
        not meet (a deviation clamp moved the aim) keeps ``q``."""
        assert self._revision is not None
        f, r, target = self._revision
        left = 1.0 - f
        lo = np.maximum(target - left * self.max_dstep, r - left * self.max_step)
        hi = np.minimum(target + left * self.max_dstep, r + left * self.max_step)
        kept = np.where(lo <= hi, np.clip(q, lo, hi), q)
        if ivs is not None:
            self._note(ivs, ACCELERATION, q, kept,
                       _cut_text(ACCELERATION, "rad/s^2 (after a revision)",
                                 self.dt**2))
        return kept

    def _note(
        self, ivs: list[Intervention], kind: str, before: np.ndarray, after: np.ndarray,
        text: Callable[[str, float], str],
    ) -> np.ndarray:
        """Note a limit that moved the command (``text(joints, largest change)``); the mask of
        joints it moved."""
        moved = np.abs(after - before) > TOL
        if moved.any():
            joints = _names(moved, self.joint_names)
            by = float(np.max(np.abs(after - before)))
            ivs.append(Intervention(kind, Level.WARN, text(_fmt_joints(joints), by), joints))
        return moved

    def _finish(
        self,
        sent: np.ndarray | None,
        ivs: list[Intervention],
        hazard: bool,
        hold_reason: str,
        revision: bool = False,
    ) -> FilterResult:
        holding = hazard or bool(hold_reason)
        if not revision:  # a revision is a setpoint between two ticks, not a tick
            self._ticks += 1
        for iv in ivs:
            self._counts[iv.kind] += 1
        if holding and not self._holding:
            self._holds_entered += 1
        self._holding = holding
        level = max((iv.level for iv in ivs), default=Level.OK)
        ordered = sorted(ivs, key=lambda iv: -iv.level)
        if ordered:
            message = "; ".join(iv.message for iv in ordered)
        elif hold_reason:
            message = f"holding: {hold_reason}"
        else:
            message = "ok"
        if sent is None:
            message = "nothing sent (no previous command and no measured position); " + message
        if level >= self._worst[0] and level > Level.OK:
            self._worst = (level, message)
        result = FilterResult(sent, tuple(ivs), holding, level, message, hazard)
        self._last_result = result
        return result

    # ------------------------------------------------------------------ diagnostics

    def diagnostics(self) -> tuple[Level, str, dict[str, str]]:
        """Summary for a /diagnostics task: (level, message, key/values).

        The level is the worst since the previous call (so a one-tick NaN between two 1 Hz
        diagnostics updates is still reported), or the current tick's if worse; reading
        resets that window. Values hold the per-kind intervention counts (ticks on which
        each acted, revisions included), ticks filtered, revisions (stream mode's early send),
        holds entered and the current state.
        """
        with self._lock:
            cur = self._last_result
            level, message = self._worst
            if cur is not None and cur.level >= level:
                level, message = cur.level, cur.message
            if level == Level.OK and cur is not None:
                message = cur.message
            self._worst = (Level.OK, "ok")
            values = {f"count.{k}": str(v) for k, v in self._counts.items()}
            values["ticks"] = str(self._ticks)
            values["holds_entered"] = str(self._holds_entered)
            values["revisions"] = str(self._revisions)
            values["holding"] = str(self._holding)
            values["velocity_scale"] = f"{self.cfg.velocity_scale:g}"
            values["acceleration_scale"] = f"{self.cfg.acceleration_scale:g}"
            return level, message, values


def limit_chunk(
    safety: SafetyFilter,
    points: np.ndarray,
    start: np.ndarray,
    measured: np.ndarray | None,
) -> np.ndarray:
    """Run a chunk's future points through the filter's static limits, statelessly.

    Used in ``chunk`` execution, where a whole trajectory goes to the controller at once:
    ``start`` is the command sent this tick (already filtered) and the filter's last step is
    the initial velocity. Each point goes through the filter's own step bounds
    (:meth:`SafetyFilter.bounded_step`: acceleration, velocity, braking toward the position
    limits), the position limits and, when ``measured`` is given, ``max_position_deviation``
    around it widened by how far the velocity limit lets the robot move by that point (the
    controller tracks the trajectory over time). Non-finite points are replaced by the
    previous point (a stop). The filter's state and counters are not touched.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != safety.n:
        raise ValueError(f"chunk must be [H, {safety.n}], got shape {pts.shape}")
    prev = np.asarray(start, dtype=np.float64).copy()
    step = safety.last_step
    out = np.empty_like(pts)
    for i, target in enumerate(pts):
        if not np.all(np.isfinite(target)):
            target = prev
        desired = np.clip(target, safety.q_min, safety.q_max) - prev
        q = np.clip(prev + safety.bounded_step(prev, step, desired)[2], safety.q_min,
                    safety.q_max)
        if measured is not None and np.all(np.isfinite(measured)):
            reach = safety.cfg.max_position_deviation + (i + 1) * safety.max_step
            q = np.clip(q, measured - reach, measured + reach)
        step = q - prev
        out[i] = q
        prev = q
    return out
