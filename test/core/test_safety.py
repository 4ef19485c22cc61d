"""Safety filter: invariants under randomized inputs, hazards, holds, counters, diagnostics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moe_policy_ros.core.config import ArmConfig, JointLimits, RobotConfig, SafetyConfig
from moe_policy_ros.core.safety import (
    ACCELERATION,
    DEVIATION,
    INVALID,
    INVALID_MEASURED,
    NO_COMMAND,
    OOD,
    OVERRUN,
    POSITION,
    STALE,
    TOL,
    VELOCITY,
    Level,
    SafetyFilter,
    brake_step,
    stale_inputs,
)

DT = 0.02  # s, 50 Hz


def make_robot() -> RobotConfig:
    def arm(name: str, n: int) -> ArmConfig:
        joints = tuple(
            JointLimits(
                name=f"{name}_j{i}",
                min_position=-1.0 - 0.5 * i,
                max_position=1.0 + 0.25 * i,
                max_velocity=2.0 + i,
                max_acceleration=10.0 + 5 * i,
            )
            for i in range(n)
        )
        return ArmConfig(name=name, joints=joints, trajectory_topic="/t", command_topic="/c")

    return RobotConfig(arms=(arm("left", 3), arm("right", 2)))


ROBOT = make_robot()
N = len(ROBOT.joint_names)
QMIN = np.array([j.min_position for j in ROBOT.joints])
QMAX = np.array([j.max_position for j in ROBOT.joints])


def make_filter(**kw: object) -> SafetyFilter:
    return SafetyFilter(ROBOT, SafetyConfig(**kw), DT)  # type: ignore[arg-type]


def test_brake_step_formula() -> None:
    # s + s^2/(2D) = g at the bound; D = 0.01, g = 0.04 -> s = 0.01*(sqrt(9)-1) = 0.02
    s = brake_step(np.array([0.04, 0.0, -1.0]), np.array([0.01, 0.01, 0.01]))
    assert s == pytest.approx([0.02, 0.0, 0.0])


def test_feasible_command_passes_unchanged() -> None:
    f = make_filter()
    # starts at rest: 0.94 rad/s and 2.96 rad/s^2 peak, within every joint's limits
    for tk in np.arange(0, 2.0, DT):
        cmd = 0.3 * (1 - np.cos(np.pi * tk)) * np.ones(N)
        r = f.filter(cmd, cmd)
        assert r.sent is not None
        np.testing.assert_allclose(r.sent, cmd, atol=1e-12)
        assert r.interventions == () and r.level == Level.OK and not r.hold
    assert all(v == 0 for v in f.counts.values())


def _random_command(rng: np.random.Generator, prev: np.ndarray) -> np.ndarray:
    kind = rng.integers(0, 6)
    if kind == 0:
        return prev + rng.normal(0, 0.01, N)  # small, mostly feasible
    if kind == 1:
        return rng.uniform(-5, 5, N)  # jumps and out-of-range
    if kind == 2:
        return rng.choice([1e300, -1e300, 1e9, -1e9, 0.0], N)  # huge
    if kind == 3:
        bad = prev.copy()
        bad[rng.integers(0, N)] = rng.choice([np.nan, np.inf, -np.inf])
        return bad
    if kind == 4:
        return np.where(rng.random(N) < 0.5, QMAX + 0.5, QMIN - 0.5)  # run into limits
    return prev + rng.normal(0, 0.2, N)


@pytest.mark.parametrize("revise", [False, True])
@pytest.mark.parametrize("seed", range(12))
def test_randomized_invariants(seed: int, revise: bool) -> None:
    """The guarantee of the module docstring for the commands of the ticks; ``revise``: after
    some ticks one or two setpoints between ticks (stream mode's early send), from a second
    random stream so the ticks' own inputs stay the same, each on the way to a command that
    keeps the tick bounds, and the next tick kept to that way."""
    rng = np.random.default_rng(seed)
    rev_rng = np.random.default_rng(seed + 1000)
    cfg = dict(
        max_position_deviation=float(rng.uniform(0.05, 1.0)),
        velocity_scale=float(rng.uniform(0.1, 1.0)),
        acceleration_scale=float(rng.uniform(0.1, 1.0)),
        overrun_action=str(rng.choice(["finish_chunk_then_hold", "hold"])),
        ood_action=str(rng.choice(["ignore", "warn", "hold"])),
        ood_energy_threshold=1.0,
    )
    f = make_filter(**cfg)
    vdt = f.max_step
    adt2 = f.max_dstep
    dev = f.cfg.max_position_deviation
    sent: list[np.ndarray] = []
    dev_acted: list[np.ndarray] = []

    def deviated(interventions: tuple) -> np.ndarray:
        acted = np.zeros(N, dtype=bool)
        for iv in interventions:
            if iv.kind == DEVIATION:
                acted |= np.isin(ROBOT.joint_names, iv.joints)
        return acted

    def check(q: np.ndarray, interventions: tuple, meas_in: np.ndarray | None) -> None:
        acted = deviated(interventions)
        assert np.all(np.isfinite(q))
        assert np.all(q >= QMIN - TOL) and np.all(q <= QMAX + TOL)
        if meas_in is not None and np.all(np.isfinite(meas_in)):
            reachable = (meas_in + dev >= QMIN) & (meas_in - dev <= QMAX)
            assert np.all(np.abs(q - meas_in)[reachable] <= dev + TOL)
        ref1 = sent[-1] if sent else None
        if ref1 is not None:
            ok_v = ~acted
            assert np.all(np.abs(q - ref1)[ok_v] <= vdt[ok_v] + TOL)
        if len(sent) >= 2:
            ok_a = ~acted & ~dev_acted[-1]
            acc = np.abs(q - 2 * sent[-1] + sent[-2])
            assert np.all(acc[ok_a] <= adt2[ok_a] + TOL), (acc - adt2)[ok_a].max()
        sent.append(q)
        dev_acted.append(acted)

    # this period's revisions: (fraction, setpoint, aim, joints a deviation clamp moved)
    way: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = []

    def check_revision(frac: float, q: np.ndarray, interventions: tuple) -> None:
        """On the way to an aim ``F`` that keeps the tick bounds from the last tick: the
        speed since the previous point within V, the slope change there within A dt."""
        f0, r0 = (0.0, sent[-1]) if not way else way[-1][:2]
        aim = r0 + (q - r0) * (1 - f0) / (frac - f0)
        acted = deviated(interventions) | dev_acted[-1]
        ok = ~acted
        assert np.all(q >= QMIN - TOL) and np.all(q <= QMAX + TOL)
        assert np.all(np.abs(q - r0)[ok] <= (frac - f0) * vdt[ok] + 1e-8)
        assert np.all(np.abs(aim - sent[-1])[ok] <= vdt[ok] + 1e-8)
        if way:  # slope change at the previous revision
            ok &= ~way[-1][3]
            assert np.all(np.abs(aim - way[-1][2])[ok] <= (1 - f0) * adt2[ok] + 1e-8)
        elif len(sent) >= 2:  # at the tick
            ok &= ~dev_acted[-2]
            acc = np.abs(aim - 2 * sent[-1] + sent[-2])
            assert np.all(acc[ok] <= adt2[ok] + 1e-8)
        way.append((frac, q, aim, acted))

    def check_kept_to_the_way(q: np.ndarray, interventions: tuple) -> None:
        frac, r, aim, acted = way[-1]
        ok = ~acted & ~deviated(interventions)
        assert np.all(np.abs(q - aim)[ok] <= (1 - frac) * adt2[ok] + 1e-8)
        assert np.all(np.abs(q - r)[ok] <= (1 - frac) * vdt[ok] + 1e-8)

    measured = rng.uniform(QMIN, QMAX)
    prev = measured.copy()
    revisions = 0
    for _ in range(600):
        # the robot follows the last command with lag, sometimes noise, sometimes a bump
        if sent:
            measured = measured + 0.5 * (sent[-1] - measured) + rng.normal(0, 0.005, N)
        if rng.random() < 0.02:
            measured = measured + rng.normal(0, 0.5, N)  # collision / bump: far from command
        meas_in: np.ndarray | None = measured.copy()
        r_m = rng.random()
        if r_m < 0.03:
            meas_in = None
        elif r_m < 0.05:
            assert meas_in is not None
            meas_in[rng.integers(0, N)] = np.nan
        proposed: np.ndarray | None = _random_command(rng, prev)
        if rng.random() < 0.05:
            proposed = None
        r = f.filter(
            proposed,
            meas_in,
            stale=("cam",) if rng.random() < 0.03 else (),
            overrun=bool(rng.random() < 0.05),
            ood_energy=float(rng.choice([0.0, 2.0, np.nan])) if rng.random() < 0.1 else None,
            hold_reason="HOLD" if rng.random() < 0.05 else "",
        )
        if r.sent is None:
            assert not sent  # only possible before anything was ever sent
            continue
        if way:
            check_kept_to_the_way(r.sent, r.interventions)
            way.clear()
        prev = r.sent
        check(r.sent, r.interventions, meas_in)
        if not (revise and rev_rng.random() < 0.4):
            continue
        fracs = np.sort(rev_rng.uniform(0.0, 0.95, int(rev_rng.integers(1, 3))))
        if len(fracs) == 2 and fracs[1] - fracs[0] < 0.05:
            fracs = fracs[:1]
        for frac in fracs:
            moved = measured + rev_rng.normal(0, 0.003, N)  # a little later
            r2 = f.revise(_random_command(rev_rng, prev), moved, float(frac))
            if r.hold:
                assert r2 is None  # a hold is never revised
            if r2 is not None:
                assert r2.sent is not None and not r2.hold
                revisions += 1
                check_revision(float(frac), r2.sent, r2.interventions)
                np.testing.assert_array_equal(f.last_sent, r.sent)  # the tick's state
    assert len(sent) > 500
    assert (revisions > 100) == revise
    assert f.diagnostics()[2]["revisions"] == str(revisions)
    assert f.diagnostics()[2]["ticks"] == "600"


def test_revise_refuses_holds_hazards_an_unanchored_filter_and_time_going_back() -> None:
    f = make_filter()
    m = np.zeros(N)
    assert f.revise(m, m, 0.5) is None  # nothing sent yet
    f.filter(m, m)
    r = f.filter(m + 0.01, m)
    assert r.sent is not None
    nan = np.full(N, np.nan)
    assert f.revise(nan, m, 0.5) is None  # invalid command
    assert f.revise(m, None, 0.5) is None  # no measured position
    assert f.revise(m, m, 0.5, stale=("cam",)) is None  # hold_on_stale_inputs
    assert f.revise(m, m, 1.0) is None and f.revise(m, m, -0.1) is None  # not this period
    assert f.counts[INVALID] == 0 and f.counts[STALE] == 0  # refusals count nothing
    warned = f.revise(m, m, 0.5, overrun=True)  # finish_chunk_then_hold: a warning, no hold
    assert warned is not None and warned.level == Level.WARN and not warned.hold
    assert f.revise(m, m, 0.4) is None and f.revise(m, m, 0.5) is None  # not after it
    assert f.revise(m, m, 0.6) is not None
    np.testing.assert_array_equal(f.last_sent, r.sent)  # a revision leaves the tick's state
    f.filter(None, m, hold_reason="HOLD")
    assert f.revise(m, m, 0.5) is None  # a hold is never revised


def test_a_revision_is_the_setpoint_on_the_way_to_the_next_ticks_command() -> None:
    """A fraction f of a period after a tick the setpoint is that fraction of the step the
    next tick would take for the same proposal (a twin filter takes it): never the next
    tick's command early, and the next tick sends that command."""
    m = np.zeros(N)
    f, twin = make_filter(), make_filter()
    for flt in (f, twin):
        flt.filter(m, m)
        flt.filter(m + 0.5 * flt.max_dstep, m)
    tick = f.last_sent
    assert tick is not None
    target = m + 10 * f.max_step  # far: the acceleration bound cuts the step
    aim = twin.filter(target, m).sent
    assert aim is not None
    r = f.revise(target, m, 0.25)
    assert r is not None and r.sent is not None and ACCELERATION in r.kinds()
    np.testing.assert_allclose(r.sent, tick + 0.25 * (aim - tick), atol=1e-12)
    r2 = f.revise(target, m, 0.75)  # a second one goes on along the same way
    assert r2 is not None and r2.sent is not None
    np.testing.assert_allclose(r2.sent, tick + 0.75 * (aim - tick), atol=1e-12)
    nxt = f.filter(target, m).sent
    np.testing.assert_allclose(nxt, aim, atol=1e-12)
    assert f.diagnostics()[2]["revisions"] == "2"


def test_the_tick_after_a_revision_keeps_to_its_way() -> None:
    """The proposal turns round after a revision (or the tick holds): the tick's command
    stays within (1 - f) A dt^2 of the revision's aim, so the setpoint path bends by at most
    A dt at the revision, where the twin without it may turn by the full acceleration bound."""
    m = np.zeros(N)
    f, twin = make_filter(), make_filter()
    for flt in (f, twin):
        flt.filter(m, m)
        flt.filter(m + 0.5 * flt.max_dstep, m)
    ahead, back = m + 10 * f.max_step, m - 10 * f.max_step
    aim = make_filter()
    aim.filter(m, m)
    aim.filter(m + 0.5 * aim.max_dstep, m)
    aimed = aim.filter(ahead, m).sent
    assert aimed is not None
    assert f.revise(ahead, m, 0.8) is not None
    kept = f.filter(back, m)
    free = twin.filter(back, m).sent
    assert kept.sent is not None and free is not None and ACCELERATION in kept.kinds()
    assert np.all(np.abs(kept.sent - aimed) <= 0.2 * f.max_dstep + TOL)
    assert np.all(np.abs(free - aimed) > 0.2 * f.max_dstep)  # what the window prevented
    held = make_filter()
    held.filter(m, m)
    held.filter(m + 0.5 * held.max_dstep, m)
    assert held.revise(ahead, m, 0.8) is not None
    braked = held.filter(None, m, hold_reason="HOLD").sent
    assert braked is not None
    assert np.all(np.abs(braked - aimed) <= 0.2 * held.max_dstep + TOL)


def test_first_command_starts_from_measured_at_rest() -> None:
    f = make_filter()
    m = np.full(N, 0.1)
    r = f.filter(np.full(N, 0.9), m)
    assert r.sent is not None
    # from rest: the first step is limited by the acceleration bound A dt^2
    np.testing.assert_allclose(r.sent, m + f.max_dstep)
    assert ACCELERATION in r.kinds()


def test_nothing_sent_without_anchor() -> None:
    f = make_filter()
    r = f.filter(np.zeros(N), None)
    assert r.sent is None and r.hold and r.hazard_hold
    assert STALE in r.kinds()
    assert "nothing sent" in r.message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_in_command_holds_with_error(bad: float) -> None:
    f = make_filter()
    m = np.zeros(N)
    f.filter(np.zeros(N), m)
    cmd = np.zeros(N)
    cmd[2] = bad
    r = f.filter(cmd, m)
    assert r.hold and r.hazard_hold and r.level == Level.ERROR
    assert r.kinds() == (INVALID,)
    assert r.sent is not None and np.all(np.isfinite(r.sent))
    np.testing.assert_allclose(r.sent, 0.0)
    assert f.counts[INVALID] == 1


def test_wrong_shape_command_is_invalid() -> None:
    f = make_filter()
    r = f.filter(np.zeros(N + 1), np.zeros(N))
    assert r.hold and r.level == Level.ERROR and INVALID in r.kinds()


def test_invalid_measured_holds_with_error() -> None:
    f = make_filter()
    f.filter(np.zeros(N), np.zeros(N))
    m = np.zeros(N)
    m[0] = np.nan
    r = f.filter(np.zeros(N), m)
    assert r.hold and r.level == Level.ERROR and INVALID_MEASURED in r.kinds()


def test_hold_brakes_without_jump_then_stays() -> None:
    f = make_filter()
    # accelerate joint 0 for a while
    q = np.zeros(N)
    r = f.filter(q, q)
    for _ in range(20):
        assert r.sent is not None
        r = f.filter(np.full(N, 0.9), r.sent)
    assert r.sent is not None
    moving = f.last_step.copy()
    assert np.all(moving > 0)
    predicted = f.hold_position
    assert predicted is not None
    seq = []
    for _ in range(60):
        r = f.filter(np.full(N, -0.9), r.sent, hold_reason="HOLD")
        assert r.hold and not r.hazard_hold and r.level == Level.OK
        assert r.interventions == ()
        assert r.sent is not None
        seq.append(r.sent)
    steps = np.diff(np.array(seq), axis=0)
    assert np.all(steps >= -TOL)  # decelerates monotonically, never reverses or jumps
    assert np.all(np.abs(np.diff(steps, axis=0)) <= f.max_dstep + TOL)
    np.testing.assert_allclose(seq[-1], seq[-2])  # stopped
    np.testing.assert_allclose(seq[-1], predicted)


def test_stale_inputs_hold_or_warn() -> None:
    f = make_filter()
    m = np.zeros(N)
    f.filter(m, m)
    r = f.filter(m, m, stale=("top",))
    assert r.hold and r.hazard_hold and r.kinds() == (STALE,) and r.level == Level.WARN
    assert "top" in r.message
    g = make_filter(hold_on_stale_inputs=False)
    g.filter(m, m)
    r = g.filter(m, m, stale=("top",))
    assert not r.hold and r.kinds() == (STALE,)


def test_measured_unavailable_always_holds() -> None:
    f = make_filter(hold_on_stale_inputs=False)
    m = np.zeros(N)
    f.filter(m, m)
    r = f.filter(np.full(N, 0.1), None)
    assert r.hold and STALE in r.kinds() and "joint_states" in r.message
    assert r.sent is not None and np.allclose(r.sent, 0.0)


def test_overrun_finish_chunk_then_hold() -> None:
    f = make_filter(overrun_action="finish_chunk_then_hold")
    m = np.zeros(N)
    f.filter(m, m)
    r = f.filter(m, m, overrun=True)  # chunk still has actions: warn, keep going
    assert not r.hold and r.kinds() == (OVERRUN,) and r.level == Level.WARN
    r = f.filter(None, m, overrun=True)  # chunk finished
    assert r.hold and r.hazard_hold and r.kinds() == (OVERRUN,)
    assert "chunk finished" in r.message
    assert f.counts[OVERRUN] == 2


def test_overrun_hold_immediately() -> None:
    f = make_filter(overrun_action="hold")
    m = np.zeros(N)
    f.filter(m, m)
    r = f.filter(m, m, overrun=True)
    assert r.hold and r.hazard_hold and r.kinds() == (OVERRUN,)


def test_no_command_holds() -> None:
    f = make_filter()
    m = np.zeros(N)
    f.filter(m, m)
    r = f.filter(None, m)
    assert r.hold and r.kinds() == (NO_COMMAND,)


@pytest.mark.parametrize(
    ("action", "energy", "hold", "counted"),
    [
        ("warn", 2.0, False, True),
        ("hold", 2.0, True, True),
        ("ignore", 2.0, False, False),
        ("hold", 0.5, False, False),
        ("warn", math.nan, False, True),
    ],
)
def test_ood(action: str, energy: float, hold: bool, counted: bool) -> None:
    f = make_filter(ood_action=action, ood_energy_threshold=1.0)
    m = np.zeros(N)
    f.filter(m, m)
    r = f.filter(m, m, ood_energy=energy)
    assert r.hold is hold
    assert (OOD in r.kinds()) is counted
    if counted:
        assert r.level == Level.WARN and "out of distribution" in r.message


def test_position_limit_clamp_and_braking() -> None:
    f = make_filter()
    q = np.zeros(N)
    r = f.filter(q, q)
    seq: list[np.ndarray] = []
    for _ in range(300):
        assert r.sent is not None
        r = f.filter(QMAX + 1.0, r.sent)
        assert r.sent is not None and np.all(r.sent <= QMAX + TOL)
        seq.append(r.sent)
    assert POSITION in r.kinds()
    np.testing.assert_allclose(seq[-1], QMAX, atol=1e-6)
    a = np.abs(np.diff(np.array(seq), 2, axis=0))
    assert np.all(a <= f.max_dstep + TOL)


def test_velocity_and_deviation_interventions_counted() -> None:
    f = make_filter(max_position_deviation=0.05)
    q = np.zeros(N)
    f.filter(q, q)
    for _ in range(30):
        r = f.filter(np.full(N, 0.9), q)  # measured stuck at 0: deviation binds
        assert r.sent is not None and np.all(np.abs(r.sent) <= 0.05 + TOL)
    assert f.counts[DEVIATION] > 0
    g = make_filter()
    r = g.filter(q, q)
    for _ in range(30):
        assert r.sent is not None
        r = g.filter(np.full(N, 0.9), r.sent)
    assert g.counts[VELOCITY] > 0 and g.counts[ACCELERATION] > 0


def test_diagnostics_reports_worst_since_last_read() -> None:
    f = make_filter()
    m = np.zeros(N)
    f.filter(m, m)
    level, msg, values = f.diagnostics()
    assert level == Level.OK and msg == "ok" and values["ticks"] == "1"
    bad = np.full(N, np.nan)
    f.filter(bad, m)
    f.filter(m, m)  # back to ok on this tick, but the ERROR is reported once
    level, msg, values = f.diagnostics()
    assert level == Level.ERROR and "NaN" in msg
    assert values[f"count.{INVALID}"] == "1" and values["holds_entered"] == "1"
    level, _, _ = f.diagnostics()
    assert level == Level.OK


def test_reset_forgets_anchor() -> None:
    f = make_filter()
    f.filter(np.zeros(N), np.zeros(N))
    f.reset()
    assert f.last_sent is None and not f.holding
    r = f.filter(np.full(N, 0.5), np.full(N, 0.5))
    assert r.sent is not None and np.allclose(r.sent, 0.5)


def test_stale_inputs_helper() -> None:
    now = 1_000_000_000
    out = stale_inputs(
        now,
        {"top": now - 300_000_000, "joint_states": now - 100_000_000, "wrist": None},
        {"top": 0.25, "joint_states": 0.2, "wrist": 0.25},
    )
    assert out == ("top", "wrist")
