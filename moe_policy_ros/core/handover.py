"""Mode machine and command arbiter: HOLD / TELEOP / AUTONOMY / ESTOP, bumpless transfer.

The node calls :meth:`CommandArbiter.tick` once per control tick with everything it knows
(:class:`TickInputs`) and publishes ``TickOutput.sent``: the arbiter picks the command source
for the current mode, blends on engage, runs the :class:`~.safety.SafetyFilter` on the result
(every mode, including the blend and the hold) and turns hazards into mode changes. Requests
(``engage_autonomy``, ``hold``, ``estop``, ``reset_estop``) come from service callbacks on any
thread and return ``(accepted, message)``; a lock serialises them with ``tick``.

Modes and transitions
---------------------
* ``HOLD``: brake to a stop and stay (see the safety module: the hold never jumps). Entered
  at start-up, on ``hold()``, on ``reset_estop()``, on any hazard the safety filter holds for
  (NaN/Inf, stale inputs, no command, overrun, OOD when configured) while in TELEOP or
  AUTONOMY, and on a released or timed-out deadman (``deadman_required``). HOLD latches: only
  a request leaves it.
* ``TELEOP``: the teleop command is sent (through the filter). The policy keeps running in
  shadow: ``TickOutput.policy_command`` is what it would command, ``policy_sent`` is False.
* ``AUTONOMY``: the policy command is sent, first through a blend (below).
* ``ESTOP``: like HOLD but latched until ``reset_estop()``, which goes to HOLD; every other
  request is refused while latched.

``engage_autonomy(True)`` (from HOLD or TELEOP) is refused, with the reason, unless: no estop
is latched, measured positions are available, the policy is warm, no policy input is stale,
the policy has a finite command, inference is not overrunning, the observation is not OOD
(when ``ood_action: hold``), a fresh teleop command exists (``require_teleop_to_engage``) and
does not already depart from the policy by more than ``override_threshold`` (it would override
at once), the deadman is pressed (``deadman_required``), and the policy's first action is
within ``engage_max_distance`` of the last sent command. ``engage_autonomy(False)`` goes to
TELEOP: from HOLD it needs a fresh teleop command within ``engage_max_distance`` (and the
deadman); from AUTONOMY it is never refused, because leaving autonomy must always work: without
a usable teleop command it goes to HOLD instead and says so.

Operator override (checked every tick, acts in the same tick): in AUTONOMY a fresh teleop
command that departs from the policy's by more than ``override_threshold`` (max over joints)
switches to TELEOP at once, with no blend (the safety filter still limits the motion); with
``deadman_required`` a released deadman, or none received within ``deadman_timeout_s``,
switches TELEOP or AUTONOMY to HOLD. A stale teleop command cannot override.

Bumpless transfer
-----------------
On entering AUTONOMY the command blends from the last command sent (frozen at the first
AUTONOMY tick) to the live policy command with the min-jerk profile
``alpha(tau) = 10 tau^3 - 15 tau^4 + 6 tau^5``, ``tau = elapsed / T``. ``T`` is
``blend_time_s``, stretched when needed so that the blend of the initial gap ``g`` stays within
the filter's (scaled) limits: min-jerk peaks at ``1.875 g / T`` and ``5.774 g / T^2``, so
``T >= max(blend_time_s, 1.875 g / V, sqrt(5.774 g / A))`` per joint. (Discrete first and
second differences of a smooth curve are averages of its derivatives, so they never exceed
those peaks.) The blend's output still goes through the safety filter; a moving policy target
or a moving teleop at the switch can still be rate-limited there. ``blend_time_s: 0`` disables
the blend. AUTONOMY -> TELEOP and every hold are immediate (the hold brakes).

Latched ``~/mode``: ``mode`` and ``mode_changes`` (a counter bumped on every transition) let
the node republish only when the counter moves; ``TickOutput.events`` lists every transition
(from ticks and from requests) since the previous tick, with its reason and level.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from enum import Enum

import numpy as np

from .clock import Clock
from .config import HandoverConfig
from .safety import FilterResult, Level, SafetyFilter

_MJ_PEAK_VEL = 1.875  # max d(alpha)/d(tau) of min-jerk
_MJ_PEAK_ACC = 10.0 / math.sqrt(3.0)  # max d2(alpha)/d(tau)2 of min-jerk


#: The operator requests by name (the policy node's services ``~/<name>``): ``engage_autonomy``
#: takes a bool (True: AUTONOMY, False: TELEOP), the others nothing.
REQUESTS = ("engage_autonomy", "hold", "estop", "reset_estop")


class Mode(str, Enum):
    HOLD = "HOLD"
    TELEOP = "TELEOP"
    AUTONOMY = "AUTONOMY"
    ESTOP = "ESTOP"


def min_jerk(tau: float) -> float:
    """Min-jerk blend weight: 0 at tau <= 0, 1 at tau >= 1, zero velocity/acceleration at both."""
    t = min(max(tau, 0.0), 1.0)
    return t**3 * (10.0 - 15.0 * t + 6.0 * t * t)


@dataclass(frozen=True)
class TickInputs:
    """What the node knows at one control tick (joint vectors in robot joint order).

    ``measured``: measured positions, None when joint_states are missing or stale.
    ``policy_command``: the chunk scheduler's command for this tick, None when there is none.
    ``teleop_command``/``teleop_stamp_ns`` and ``deadman``/``deadman_stamp_ns``: the latest
    samples and their stamps on the arbiter's clock (None = never received).
    ``stale_inputs``: names of policy inputs older than their max age (cameras, ...).
    ``policy_warm``: the policy finished warm-up. ``overrun``: the latest inference missed its
    deadline. ``ood_energy``: the novelty score of the latest observation (None = n/a).
    """

    measured: np.ndarray | None = None
    policy_command: np.ndarray | None = None
    teleop_command: np.ndarray | None = None
    teleop_stamp_ns: int | None = None
    deadman: bool | None = None
    deadman_stamp_ns: int | None = None
    stale_inputs: tuple[str, ...] = ()
    policy_warm: bool = False
    overrun: bool = False
    ood_energy: float | None = None


@dataclass(frozen=True)
class ModeEvent:
    stamp_ns: int
    previous: Mode
    mode: Mode
    reason: str
    level: Level


@dataclass(frozen=True)
class TickOutput:
    """One tick's result. Publish ``sent`` (when not None) and ``policy_command`` as shadow.

    ``candidate`` is what was passed to the safety filter (None for a hold or when no command
    existed); ``policy_sent`` says whether the policy (possibly blended) drove ``sent``;
    ``blend_alpha`` is the blend weight on the policy while blending, else None.
    """

    mode: Mode
    sent: np.ndarray | None
    candidate: np.ndarray | None
    policy_command: np.ndarray | None
    policy_sent: bool
    blend_alpha: float | None
    filter: FilterResult
    events: tuple[ModeEvent, ...]
    mode_changes: int


def _as_array(x: object) -> np.ndarray | None:
    if x is None:
        return None
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _finite_vector(x: object, n: int) -> np.ndarray | None:
    a = _as_array(x)
    if a is None or a.shape != (n,) or not np.all(np.isfinite(a)):
        return None
    return a


class CommandArbiter:
    """Mode machine + command arbitration + safety filtering, one ``tick`` per control tick."""

    def __init__(self, cfg: HandoverConfig, safety: SafetyFilter, clock: Clock) -> None:
        self.cfg = cfg
        self.safety = safety
        self.clock = clock
        self._n = safety.n
        self._names = safety.joint_names
        self._lock = threading.RLock()
        self._mode = Mode.HOLD
        self._changes = 0
        self._events: list[ModeEvent] = []
        self._pending: Mode | None = None if cfg.initial_mode == "HOLD" else Mode(cfg.initial_mode)
        self._inputs: TickInputs | None = None
        self._blend_pending = False
        self._blend_start: np.ndarray | None = None
        self._blend_t0 = 0
        self._blend_T = 0.0

    # ------------------------------------------------------------------ state

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._mode

    @property
    def mode_changes(self) -> int:
        with self._lock:
            return self._changes

    @property
    def pending_initial_mode(self) -> Mode | None:
        """``initial_mode`` while it is still being attempted (each tick, from HOLD)."""
        with self._lock:
            return self._pending

    def _transition(self, to: Mode, reason: str, level: Level = Level.OK) -> None:
        if to == self._mode:
            return
        ev = ModeEvent(self.clock.now_ns(), self._mode, to, reason, level)
        self._events.append(ev)
        self._mode = to
        self._changes += 1
        self._blend_pending = to == Mode.AUTONOMY and self.cfg.blend_time_s > 0
        self._blend_start = None

    # ------------------------------------------------------------------ input checks

    def _teleop_stale(self, inp: TickInputs, now: int) -> bool:
        if inp.teleop_stamp_ns is None:
            return True
        return now - inp.teleop_stamp_ns > round(self.cfg.teleop_max_age_s * 1e9)

    def _teleop(self, inp: TickInputs, now: int) -> tuple[np.ndarray | None, str]:
        """The teleop command if fresh and valid, else None and why."""
        if inp.teleop_command is None or inp.teleop_stamp_ns is None:
            return None, "no teleop command received yet"
        if self._teleop_stale(inp, now):
            age = (now - inp.teleop_stamp_ns) / 1e9
            return None, f"teleop command stale ({age:.3f} s > {self.cfg.teleop_max_age_s} s)"
        t = _finite_vector(inp.teleop_command, self._n)
        if t is None:
            return None, f"teleop command is not {self._n} finite values"
        return t, ""

    def _deadman(self, inp: TickInputs, now: int) -> str:
        """Empty when the deadman is not required or is pressed and fresh; else why not."""
        if not self.cfg.deadman_required:
            return ""
        if inp.deadman is None or inp.deadman_stamp_ns is None:
            return "deadman: no message received"
        if now - inp.deadman_stamp_ns > round(self.cfg.deadman_timeout_s * 1e9):
            age = (now - inp.deadman_stamp_ns) / 1e9
            return (
                f"deadman timed out (no message for {age:.3f} s > {self.cfg.deadman_timeout_s} s)"
            )
        if not inp.deadman:
            return "deadman released"
        return ""

    def _reference(self, inp: TickInputs) -> np.ndarray | None:
        last = self.safety.last_sent
        if last is not None:
            return last
        m = _finite_vector(inp.measured, self._n)
        return None if m is None else np.clip(m, self.safety.q_min, self.safety.q_max)

    def _gap(self, a: np.ndarray, b: np.ndarray) -> tuple[float, str]:
        d = np.abs(a - b)
        i = int(np.argmax(d))
        return float(d[i]), self._names[i]

    def _autonomy_refusal(self, inp: TickInputs, now: int) -> str:
        cfg = self.cfg
        if _finite_vector(inp.measured, self._n) is None:
            return "no measured joint state (missing, stale or not finite)"
        if not inp.policy_warm:
            return "policy is not warm"
        if inp.stale_inputs:
            return f"inputs stale: {', '.join(inp.stale_inputs)}"
        if inp.policy_command is None:
            return "policy has no command yet"
        p = _finite_vector(inp.policy_command, self._n)
        if p is None:
            return f"policy command is not {self._n} finite values"
        if inp.overrun:
            return "inference is overrunning"
        sc = self.safety.cfg
        if sc.ood_action == "hold" and inp.ood_energy is not None:
            if not inp.ood_energy <= sc.ood_energy_threshold:
                return (
                    f"observation out of distribution (energy {inp.ood_energy:.3g} > "
                    f"{sc.ood_energy_threshold:.3g})"
                )
        if cfg.require_teleop_to_engage:
            t, why = self._teleop(inp, now)
            if t is None:
                return why
            dev, joint = self._gap(t, p)
            if dev > cfg.override_threshold:
                return (
                    f"teleop departs from the policy by {dev:.3f} rad on {joint} "
                    f"(> override_threshold {cfg.override_threshold}): align the leader first"
                )
        dm = self._deadman(inp, now)
        if dm:
            return dm
        ref = self._reference(inp)
        if ref is None:  # pragma: no cover - measured is valid above
            return "no reference position"
        dist, joint = self._gap(p, ref)
        if dist > cfg.engage_max_distance:
            return (
                f"first policy action is {dist:.3f} rad from the current command on {joint} "
                f"(> engage_max_distance {cfg.engage_max_distance})"
            )
        return ""

    def _teleop_refusal(self, inp: TickInputs, now: int) -> str:
        if _finite_vector(inp.measured, self._n) is None:
            return "no measured joint state (missing, stale or not finite)"
        t, why = self._teleop(inp, now)
        if t is None:
            return why
        dm = self._deadman(inp, now)
        if dm:
            return dm
        if self._mode == Mode.HOLD:
            ref = self._reference(inp)
            if ref is not None:
                dist, joint = self._gap(t, ref)
                if dist > self.cfg.engage_max_distance:
                    return (
                        f"teleop command is {dist:.3f} rad from the current command on {joint} "
                        f"(> engage_max_distance {self.cfg.engage_max_distance})"
                    )
        return ""

    # ------------------------------------------------------------------ requests

    def engage_autonomy(self, enable: bool) -> tuple[bool, str]:
        """``True``: ask for AUTONOMY; ``False``: return to TELEOP. Returns (accepted, why)."""
        with self._lock:
            self._pending = None
            return self._engage(enable)

    def _engage(self, enable: bool) -> tuple[bool, str]:
        if self._mode == Mode.ESTOP:
            return False, "refused: estop is latched; call reset_estop first"
        inp = self._inputs
        now = self.clock.now_ns()
        target = Mode.AUTONOMY if enable else Mode.TELEOP
        if self._mode == target:
            return True, f"already in {target.value}"
        if inp is None:
            return False, "refused: no inputs yet (no control tick has run)"
        if enable:
            why = self._autonomy_refusal(inp, now)
            if why:
                return False, f"refused: {why}"
            self._transition(Mode.AUTONOMY, "engage_autonomy(true)")
            return True, "AUTONOMY engaged" + (
                f" (blending over >= {self.cfg.blend_time_s} s)" if self.cfg.blend_time_s else ""
            )
        why = self._teleop_refusal(inp, now)
        if why and self._mode == Mode.AUTONOMY:
            self._transition(Mode.HOLD, f"engage_autonomy(false) without usable teleop: {why}")
            return True, f"left AUTONOMY for HOLD, not TELEOP: {why}"
        if why:
            return False, f"refused: {why}"
        self._transition(Mode.TELEOP, "engage_autonomy(false)")
        return True, "TELEOP engaged"

    def hold(self, reason: str = "hold requested") -> tuple[bool, str]:
        with self._lock:
            self._pending = None
            if self._mode == Mode.ESTOP:
                return False, "refused: estop is latched (the robot is already holding)"
            if self._mode == Mode.HOLD:
                return True, "already in HOLD"
            self._transition(Mode.HOLD, reason)
            return True, "HOLD"

    def estop(self, reason: str = "estop requested") -> tuple[bool, str]:
        with self._lock:
            self._pending = None
            if self._mode == Mode.ESTOP:
                return True, "estop already latched"
            self._transition(Mode.ESTOP, reason, Level.ERROR)
            return True, "ESTOP latched; reset_estop returns to HOLD"

    def reset_estop(self) -> tuple[bool, str]:
        with self._lock:
            if self._mode != Mode.ESTOP:
                return False, f"refused: estop is not latched (mode {self._mode.value})"
            self._transition(Mode.HOLD, "reset_estop")
            return True, "estop reset; now in HOLD"

    def request(self, name: str, enable: bool = False) -> tuple[bool, str]:
        """The operator request ``name`` (:data:`REQUESTS`; ``enable`` for
        ``engage_autonomy``): (accepted, why), as the request's own method returns it."""
        if name in REQUESTS:  # each request is the arbiter's method of that name
            method = getattr(self, name)
            return method(enable) if name == "engage_autonomy" else method()
        raise ValueError(f"unknown operator request {name!r} (known: {', '.join(REQUESTS)})")

    # ------------------------------------------------------------------ tick

    def _blend_duration(self, gap: np.ndarray) -> float:
        T = self.cfg.blend_time_s
        t_v = _MJ_PEAK_VEL * gap / self.safety.v_max
        t_a = np.sqrt(_MJ_PEAK_ACC * gap / self.safety.a_max)
        return float(max(T, float(np.max(t_v)), float(np.max(t_a))))

    def tick(self, inp: TickInputs) -> TickOutput:
        """Run one control tick; see the module docstring. Never raises on bad inputs."""
        with self._lock:
            now = self.clock.now_ns()
            self._inputs = inp
            if self._mode == Mode.HOLD and self._pending is not None:
                ok, _ = self._engage(self._pending == Mode.AUTONOMY)
                if ok:
                    self._pending = None

            policy = _finite_vector(inp.policy_command, self._n)
            teleop, _ = self._teleop(inp, now)
            self._operator_override(inp, now, policy, teleop)

            # command source
            mode = self._mode
            alpha: float | None = None
            candidate: np.ndarray | None = None
            if mode == Mode.AUTONOMY:
                candidate, alpha = self._autonomy_candidate(inp, now, policy)
                result = self.safety.filter(
                    candidate,
                    inp.measured,
                    stale=inp.stale_inputs,
                    overrun=inp.overrun,
                    ood_energy=inp.ood_energy,
                )
            elif mode == Mode.TELEOP:
                candidate, stale = self._teleop_candidate(inp, now, teleop)
                result = self.safety.filter(candidate, inp.measured, stale=stale)
            else:
                result = self.safety.filter(None, inp.measured, hold_reason=mode.value)

            if result.hazard_hold and mode in (Mode.AUTONOMY, Mode.TELEOP):
                self._transition(Mode.HOLD, result.message, result.level)

            events = tuple(self._events)
            self._events.clear()
            return TickOutput(
                mode=self._mode,
                sent=result.sent,
                candidate=candidate,
                policy_command=_as_array(inp.policy_command),
                policy_sent=mode == Mode.AUTONOMY and not result.hold,
                blend_alpha=alpha,
                filter=result,
                events=events,
                mode_changes=self._changes,
            )

    def _operator_override(
        self, inp: TickInputs, now: int, policy: np.ndarray | None, teleop: np.ndarray | None
    ) -> None:
        """The deadman released -> HOLD; teleop departing from the policy -> TELEOP."""
        if self._mode in (Mode.AUTONOMY, Mode.TELEOP):
            dm = self._deadman(inp, now)
            if dm:
                self._transition(Mode.HOLD, dm, Level.WARN)
        if self._mode == Mode.AUTONOMY and teleop is not None and policy is not None:
            dev, joint = self._gap(teleop, policy)
            if dev > self.cfg.override_threshold:
                self._transition(
                    Mode.TELEOP,
                    f"operator override: teleop departs from the policy by {dev:.3f} rad "
                    f"on {joint} (> {self.cfg.override_threshold})",
                    Level.WARN,
                )

    def _autonomy_candidate(
        self, inp: TickInputs, now: int, policy: np.ndarray | None
    ) -> tuple[np.ndarray | None, float | None]:
        """The policy command, min-jerk blended from the reference while engaging; the blend
        fraction (None once the blend is over)."""
        # an invalid policy command goes to the filter as is: it holds with ERROR
        candidate = policy if policy is not None else _as_array(inp.policy_command)
        if not (self._blend_pending and policy is not None):
            return candidate, None
        if self._blend_start is None:
            start = self._reference(inp)
            if start is None:
                start = policy
            self._blend_start = start
            self._blend_t0 = now
            self._blend_T = self._blend_duration(np.abs(policy - start))
        tau = (now - self._blend_t0) / 1e9 / self._blend_T
        if tau >= 1.0:
            self._blend_pending = False
            return candidate, None
        alpha = min_jerk(tau)
        return self._blend_start + alpha * (policy - self._blend_start), alpha

    def _teleop_candidate(
        self, inp: TickInputs, now: int, teleop: np.ndarray | None
    ) -> tuple[np.ndarray | None, tuple[str, ...]]:
        """The teleop command and the stale inputs to report with it."""
        if teleop is not None:
            return teleop, ()
        # stale: the filter holds (or warns, per hold_on_stale_inputs); None or invalid: the
        # filter holds
        candidate = _as_array(inp.teleop_command)
        if candidate is not None and self._teleop_stale(inp, now):
            return candidate, ("teleop",)
        return candidate, ()
