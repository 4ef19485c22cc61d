"""The policy node's runtime without ROS (core/pipeline.py): a real bundle on real ONNX Runtime,
the shipped parameter file, a FakeClock for the monotonic side and hand-written ROS stamps."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moe_policy_ros.core.backends import make_backend
from moe_policy_ros.core.bundle import LoadedBundle, load_bundle
from moe_policy_ros.core.clock import FakeClock
from moe_policy_ros.core.config import (
    ConfigError,
    RuntimeConfig,
    config_from_params,
    load_param_file,
)
from moe_policy_ros.core.diagnostics import (
    CONTROL_LOOP,
    INFERENCE,
    INPUTS,
    ROUTER,
    SAFETY,
    Key,
    Level,
)
from moe_policy_ros.core.handover import Mode
from moe_policy_ros.core.imageconv import ImageError
from moe_policy_ros.core.inputs import InputError
from moe_policy_ros.core.pipeline import (
    ControlOutput,
    PolicyPipeline,
    build_pipeline,
    configure_problems,
)
from moe_policy_ros.core.preprocess import FrameWorker, RawFrame
from moe_policy_ros.core.runtime import MoEPolicy
from moe_policy_ros.core.timeline import ADDED, NONFINITE
from moe_policy_ros.core.types import Observation, PolicyOutput

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "config" / "dual_arm.yaml"
BUNDLE = "models/demo_adamoe"
MS = 1_000_000
PERIOD_NS = 20 * MS  # 50 Hz in dual_arm.yaml
T0_ROS = 1_700_000_000 * 1_000_000_000  # a wall-clock-like ROS time


def _params(**changes: Any) -> dict[str, Any]:
    """dual_arm.yaml's parameters of the policy node, with ``a__b=value`` changes."""
    params = load_param_file(PARAMS)
    for key, value in changes.items():
        *path, leaf = key.split("__")
        functools.reduce(lambda node, part: node.setdefault(part, {}), path, params)[leaf] = value
    return params


def _cfg(**changes: Any) -> RuntimeConfig:
    return config_from_params(_params(**changes))


@pytest.fixture(scope="module")
def bundle() -> LoadedBundle:
    return load_bundle(REPO / BUNDLE)


@pytest.fixture(scope="module")
def policy(bundle: LoadedBundle) -> MoEPolicy:
    return MoEPolicy(bundle, make_backend("onnxruntime", intra_op_threads=1))


class Rig:
    """A pipeline with a FakeClock and a ROS time that advance together, one period a tick."""

    def __init__(self, pipe: PolicyPipeline, clock: FakeClock) -> None:
        self.pipe, self.clock = pipe, clock
        self.ros = T0_ROS
        self.step = 0
        self.q = np.zeros(len(pipe.joint_names))
        self.image = np.full((96, 128, 3), 90, np.uint8)

    def sense(self, age_ns: int = 0) -> None:
        """A joint state and a camera frame received now, stamped ``age_ns`` ago."""
        inputs, stamp = self.pipe.inputs, self.ros - age_ns
        inputs.put_joint_state(self.pipe.joint_names, self.q, [], stamp, self.ros)
        for cam in self.pipe.camera_pipelines:
            assert self.pipe.image_arrived(cam, stamp, self.ros)
            inputs.put_image(cam, self.image, stamp, self.ros)

    def tick(self) -> Any:
        out = self.pipe.control_step(self.step, self.clock.now_ns(), self.ros)
        self.step += 1
        self.clock.advance_ns(PERIOD_NS)
        self.ros += PERIOD_NS
        return out

    def engage(self) -> None:
        """Sense, infer, tick until the policy has a command, then engage autonomy."""
        self.sense()
        assert self.pipe.infer_once(self.ros) is not None
        self.tick()
        self.sense()
        self.tick()
        ok, msg = self.pipe.arbiter.engage_autonomy(True)
        assert ok, msg


def _rig(policy: MoEPolicy, bundle: LoadedBundle, **changes: Any) -> Rig:
    """A rig on dual_arm.yaml with ``changes``; engaging needs no teleop leader and accepts the
    demo policy's first action from the zero pose (about 1.2 rad away) unless asked."""
    changes.setdefault("handover__require_teleop_to_engage", False)
    changes.setdefault("handover__engage_max_distance", 2.0)
    clock = FakeClock(5_000 * MS)
    pipe = PolicyPipeline(_cfg(**changes), bundle, policy, clock)
    pipe.start()
    return Rig(pipe, clock)


@pytest.fixture()
def rig(policy: MoEPolicy, bundle: LoadedBundle) -> Iterator[Rig]:
    yield _rig(policy, bundle)


# ---------------------------------------------------------------------------- configure


def test_build_pipeline_loads_warms_and_describes() -> None:
    made: list[tuple[str, dict[str, Any]]] = []

    def backend(kind: str, **options: Any) -> Any:
        made.append((kind, options))
        return make_backend("onnxruntime", device=options["device"], intra_op_threads=1)

    pipe = build_pipeline(_cfg(), resolve_path=lambda rel: REPO / rel, make_backend=backend,
                          clock=FakeClock())
    assert [k for k, _ in made] == ["auto"]  # the parameter file's backend, as given
    assert made[0][1]["checkpoint"] is None
    assert pipe.bundle.manifest.name == "demo_adamoe"
    assert [a.name for a in pipe.arms] == ["left_arm", "right_arm"]
    assert pipe.arms[1].cols == slice(7, 14) and pipe.arms[1].joint_names[0] == "right_waist"
    assert pipe.gate_label == "experts:" + ",".join(pipe.bundle.manifest.experts.labels)
    line = pipe.describe()
    assert "demo_adamoe (adamoe, 8 experts, H=20)" in line and "mode stream" in line


def test_configure_lists_every_problem_before_building_a_backend(bundle: LoadedBundle) -> None:
    cfg = _cfg(policy__execution__merge="rtc", cameras__top__width=64,
               cameras__top__height=96)
    problems = configure_problems(cfg, bundle.manifest, "bundle X")
    assert len(problems) == 2
    assert any("size 64x96" in p and "128x96" in p for p in problems)
    assert any("'rtc'" in p and "policy.execution.merge" in p for p in problems)

    def no_backend(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a backend was built for a bundle that does not fit")

    with pytest.raises(ConfigError) as err:
        build_pipeline(cfg, resolve_path=lambda rel: REPO / rel, make_backend=no_backend,
                       clock=FakeClock())
    assert "64x96" in str(err.value) and "'rtc'" in str(err.value)


# ---------------------------------------------------------------------------- inference


def test_no_inference_until_every_input_is_fresh(rig: Rig) -> None:
    pipe = rig.pipe
    assert pipe.infer_once(rig.ros) is None  # nothing received
    pipe.inputs.put_joint_state(pipe.joint_names, rig.q, [], rig.ros, rig.ros)
    assert pipe.infer_once(rig.ros) is None  # the camera is missing
    rig.sense()
    assert pipe.infer_once(rig.ros + 300 * MS) is None  # 0.3 s old > camera max age 0.25 s
    assert pipe.infer_stats.chunks == 0 and not pipe.policy_warm


@pytest.mark.parametrize("sync", ["image", "latest"])
def test_the_observation_pairs_the_frame_with_the_joint_state_of_its_instant(
    policy: MoEPolicy, bundle: LoadedBundle, sync: str
) -> None:
    """Through ROS 2 the frame an inference used was 40-140 ms older than the newest joint
    state; demonstrations pair both at one instant (``policy.proprio_sync: image``)."""
    rig = _rig(policy, bundle, policy__proprio_sync=sync)
    pipe, names = rig.pipe, rig.pipe.joint_names
    frame_stamp = rig.ros - 100 * MS
    for age_ms in (140, 100, 60, 20, 0):  # joint states, positions = their age in ms
        stamp = rig.ros - age_ms * MS
        pipe.inputs.put_joint_state(names, np.full(len(names), age_ms / 1000), [], stamp,
                                    rig.ros)
    for cam in pipe.camera_pipelines:
        pipe.inputs.put_image(cam, rig.image, frame_stamp, rig.ros)
    req = pipe.begin_inference(rig.ros)
    assert req is not None
    want = 0.1 if sync == "image" else 0.0
    assert np.allclose(req.obs.proprio, want)
    assert req.obs.stamp_ns == frame_stamp  # the chunk is placed from the frame's instant
    assert np.allclose(req.measured, 0.0)  # the newest state fills uncommanded joints


def test_a_joint_state_older_than_the_frame_does_not_age_the_observation(
    policy: MoEPolicy, bundle: LoadedBundle
) -> None:
    """The joint state nearest a frame can be up to half a joint period older than it; the
    observation still shows the frame's instant, so the chunk's place and the
    obs-to-command latency count from the frame's ``header.stamp`` (measured through rclpy,
    the older joint stamp made the observation look ~10 ms older at the median)."""
    rig = _rig(policy, bundle, policy__proprio_sync="image")
    pipe, names = rig.pipe, rig.pipe.joint_names
    frame_stamp = rig.ros - 30 * MS
    for age_ms in (58, 38, 18):  # 50 Hz joint states; the nearest is 8 ms before the frame
        pipe.inputs.put_joint_state(names, np.full(len(names), age_ms / 1000), [],
                                    rig.ros - age_ms * MS, rig.ros)
    for cam in pipe.camera_pipelines:
        pipe.inputs.put_image(cam, rig.image, frame_stamp, rig.ros)
    req = pipe.begin_inference(rig.ros)
    assert req is not None
    assert np.allclose(req.obs.proprio, 0.038)  # the joint state of the frame's instant
    assert req.obs.stamp_ns == frame_stamp
    assert pipe.infer_stats.obs_age.summary().p50 == pytest.approx(30.0)


def test_infer_once_queues_the_chunk_and_returns_the_router_state(rig: Rig) -> None:
    pipe = rig.pipe
    rig.sense()
    res = pipe.infer_once(rig.ros)
    assert res is not None and res.offered == ADDED and res.router is not None
    out = pipe.infer_stats.last_output
    assert out is not None
    assert res.router.gates == pytest.approx(out.decision.state.gates.tolist())
    assert res.router.active == out.decision.active.tolist()
    assert res.router.dominant == pipe.expert_labels[int(np.argmax(res.router.gates))]
    assert not res.router.shadow  # HOLD: the router state is not a shadow one
    assert pipe.policy_warm and pipe.infer_stats.chunks == 1
    assert pipe.ood_energy is None  # adamoe has no energies
    # the chunk of an observation at step 0 starts at step 1 (the latency step)
    assert rig.tick().tick.policy_command is None
    proposal = rig.tick().tick.policy_command
    assert proposal is not None and proposal.shape == (14,)


class _Poisoned:
    """The real policy with NaN in its chunk (an expert that diverged)."""

    def __init__(self, policy: MoEPolicy) -> None:
        self._policy = policy
        self.backend, self.strategy = policy.backend, policy.strategy

    def infer(self, obs: Observation) -> PolicyOutput:
        out = self._policy.infer(obs)
        actions = out.actions.copy()
        actions[3, 0] = np.nan
        return replace(out, actions=actions)

    def reset(self) -> None:
        self._policy.reset()


def test_a_nonfinite_chunk_is_counted_and_holds_with_an_error(
    policy: MoEPolicy, bundle: LoadedBundle
) -> None:
    rig = _rig(policy, bundle)
    rig.engage()
    assert rig.pipe.arbiter.mode == Mode.AUTONOMY
    rig.pipe.policy = _Poisoned(policy)  # type: ignore[assignment]
    rig.sense()
    res = rig.pipe.infer_once(rig.ros)
    assert res is not None and res.offered == NONFINITE and res.router is None
    assert rig.pipe.infer_stats.nonfinite == 1
    out = rig.tick()
    assert out.tick.mode == Mode.HOLD
    assert out.tick.filter.level == Level.ERROR
    inference = rig.pipe.diagnostic_tasks(rig.ros, True)[1]
    assert inference.level == Level.ERROR and "1 chunks with NaN/Inf" in inference.message


# ---------------------------------------------------------------------------- control


def test_stream_mode_sends_each_arm_its_columns(rig: Rig) -> None:
    rig.q[:] = np.linspace(0.0, 0.6, 14)
    rig.q[[6, 13]] = 0.5  # grippers inside 0..1
    rig.sense()
    out = rig.tick()
    assert out.tick.mode == Mode.HOLD and out.sent is not None
    np.testing.assert_allclose(out.sent, rig.q)  # HOLD keeps the measured position
    assert [a.name for a, _ in out.commands] == ["left_arm", "right_arm"]
    np.testing.assert_allclose(out.commands[1][1], rig.q[7:])
    assert out.trajectories == [] and out.shadow is None
    assert out.stamp_ns == T0_ROS


def test_autonomy_records_observation_to_command_latency(rig: Rig) -> None:
    rig.engage()
    n = rig.pipe.control_stats.obs_to_cmd.summary().count
    rig.sense(age_ns=7 * MS)  # the observation was taken 7 ms before this tick
    assert rig.pipe.infer_once(rig.ros) is not None
    out = rig.tick()  # takes the new chunk (its steps start at the next tick)
    assert out.tick.mode == Mode.AUTONOMY and out.tick.policy_sent
    o2c = rig.pipe.control_stats.obs_to_cmd.summary()
    assert o2c.count == n + 1 and o2c.max == pytest.approx(7.0)
    rig.tick()  # no new chunk: nothing recorded
    assert rig.pipe.control_stats.obs_to_cmd.summary().count == n + 1


@pytest.mark.parametrize("restart", [True, False])
def test_engage_from_hold_starts_the_newest_plan_instead_of_mixing_the_held_ones(
    policy: MoEPolicy, bundle: LoadedBundle, restart: bool
) -> None:
    """While the robot holds, every chunk plans the motion from the same still pose, each
    from its own step; at engage only the newest, from its first row, is what the robot
    should follow (``restart_on_engage: false``: the ensemble of all of them, as before)."""
    rig = _rig(policy, bundle, policy__execution__merge="ensemble",
               policy__execution__restart_on_engage=restart, handover__blend_time_s=0.0)
    for _ in range(3):  # three chunks, 5 steps apart, the robot still in HOLD
        rig.sense()
        res = rig.pipe.infer_once(rig.ros)
        assert res is not None
        for _ in range(5):
            assert rig.tick().tick.mode == Mode.HOLD
    newest = rig.pipe.timeline.expand(res.output.actions, rig.q)
    ok, msg = rig.pipe.arbiter.engage_autonomy(True)
    assert ok, msg
    first = rig.tick().tick
    assert first.mode == Mode.AUTONOMY and first.policy_command is not None
    if restart:
        np.testing.assert_allclose(first.policy_command, newest[0])
        np.testing.assert_allclose(rig.tick().tick.policy_command, newest[1])
    else:
        assert not np.allclose(first.policy_command, newest[0])


def test_chunk_mode_sends_one_point_while_holding_and_the_chunk_under_autonomy(
    policy: MoEPolicy, bundle: LoadedBundle
) -> None:
    rig = _rig(policy, bundle, policy__execution__mode="chunk", handover__blend_time_s=0.0)
    rig.sense()
    out = rig.tick()
    assert out.commands == [] and [a.name for a, _ in out.trajectories] == ["left_arm",
                                                                            "right_arm"]
    left = out.trajectories[0][1]
    assert left.start_time_ns == out.stamp_ns  # a hold is stamped now, one period ahead
    assert [p.time_from_start for p in left.points] == [pytest.approx(0.02)]
    assert len(left.joint_names) == 7 and left.joint_names[0] == "left_waist"

    rig.engage()
    obs_ros = rig.ros
    rig.sense()
    res = rig.pipe.infer_once(obs_ros)
    assert res is not None and res.offered == ADDED
    out = rig.tick()
    assert out.tick.policy_sent and out.tick.blend_alpha is None
    right = out.trajectories[1][1]
    assert right.start_time_ns == obs_ros  # stamped with the observation time
    assert len(right.points) > 5  # this tick's command, then the rest of the chunk
    assert right.points[0].positions == pytest.approx(tuple(out.sent[7:]))
    times = [p.time_from_start for p in right.points]
    assert times[0] == pytest.approx(0.02) and np.allclose(np.diff(times), 0.02)
    # the next tick has no new chunk: the controller keeps executing this one
    follow = rig.tick()
    assert follow.tick.policy_sent and follow.sent is not None and follow.trajectories == []


def test_chunk_mode_sends_a_new_chunk_when_it_arrives_not_at_the_next_tick(
    policy: MoEPolicy, bundle: LoadedBundle
) -> None:
    rig = _rig(policy, bundle, policy__execution__mode="chunk", handover__blend_time_s=0.0)
    pipe = rig.pipe
    rig.engage()
    last = rig.tick()  # policy-driven, blend done: the decision the early send stands on
    assert last.tick.policy_sent and pipe.arbiter.mode == Mode.AUTONOMY
    rig.clock.advance_ns(-PERIOD_NS // 2)  # mid-period on the loop's clock
    n = pipe.control_stats.obs_to_cmd.summary().count
    obs_ros = rig.ros - 3 * MS  # a frame taken 3 ms ago ...
    rig.sense(age_ns=3 * MS)
    assert pipe.infer_once(rig.ros).offered == ADDED
    rig.clock.advance_ns(2 * MS)  # ... whose chunk is ready 2 ms later, mid-period
    published: list[ControlOutput] = []
    assert pipe.send_on_arrival(rig.ros + 2 * MS, published.append)
    early = published[0]
    assert early.sent is None and early.commands == [] and early.tick.events == ()
    sent = early.trajectories
    assert [a.name for a, _ in sent] == ["left_arm", "right_arm"]
    right = sent[1][1]
    assert right.start_time_ns == obs_ros and len(right.points) > 5
    # the last tick's filtered command first, then the chunk one period apart
    assert right.points[0].positions == pytest.approx(tuple(last.sent[7:]))
    assert np.allclose(np.diff([p.time_from_start for p in right.points]), 0.02)
    o2c = pipe.control_stats.obs_to_cmd.values()
    assert len(o2c) == n + 1 and o2c[-1] == pytest.approx(5.0)  # not at the next tick
    assert pipe.control_stats.tick_wait.values()[-1] == pytest.approx(2.0)
    assert not pipe.send_on_arrival(rig.ros, published.append)  # sent once
    assert len(published) == 1
    rig.clock.advance_ns(PERIOD_NS // 2 - 2 * MS)
    follow = rig.tick()  # the next tick finds no new chunk: the controller executes it
    assert follow.tick.policy_sent and follow.trajectories == []
    assert pipe.control_stats.obs_to_cmd.summary().count == n + 1


def test_a_tick_cannot_come_between_the_early_decision_and_its_publication(
    policy: MoEPolicy, bundle: LoadedBundle
) -> None:
    """The early send publishes under the tick lock: a tick that starts meanwhile (and might
    decide HOLD) waits, so its own publication comes after the trajectory's, never before."""
    rig = _rig(policy, bundle, policy__execution__mode="chunk", handover__blend_time_s=0.0)
    pipe = rig.pipe
    rig.engage()
    rig.tick()
    rig.clock.advance_ns(-PERIOD_NS // 2)  # mid-period on the loop's clock
    rig.sense()
    assert pipe.infer_once(rig.ros).offered == ADDED
    order: list[str] = []

    def tick() -> None:
        pipe.control_step(rig.step, rig.clock.now_ns(), rig.ros)
        order.append("tick")

    def publish(_trajectories: Any) -> None:
        ticker = threading.Thread(target=tick)
        ticker.start()
        ticker.join(timeout=0.2)  # blocked on the lock while this publication runs
        order.append("trajectory")
        publish.ticker = ticker  # type: ignore[attr-defined]

    assert pipe.send_on_arrival(rig.ros, publish)
    publish.ticker.join(timeout=5.0)  # type: ignore[attr-defined]
    assert order == ["trajectory", "tick"]

    # and the other way round: an early send that starts while a tick publishes waits for it
    rig.sense()
    assert pipe.infer_once(rig.ros).offered == ADDED
    order.clear()

    def early() -> None:
        order.append("early sent" if pipe.send_on_arrival(rig.ros, lambda _t: None)
                     else "early: nothing")

    def tick_publish(_out: Any) -> None:
        sender = threading.Thread(target=early)
        sender.start()
        sender.join(timeout=0.2)
        order.append("tick")
        tick_publish.sender = sender  # type: ignore[attr-defined]

    rig.clock.advance_ns(PERIOD_NS)  # the next period: the new chunk is due at this tick
    rig.ros += PERIOD_NS
    pipe.control_step(rig.step + 1, rig.clock.now_ns(), rig.ros, tick_publish)
    tick_publish.sender.join(timeout=5.0)  # type: ignore[attr-defined]
    assert order == ["tick", "early: nothing"]  # the tick took the chunk itself


def _sense_at(rig: Rig, taken_ns: int, received_ns: int) -> None:
    """A joint state and a camera frame taken at ROS time ``taken_ns``, received at
    ``received_ns``."""
    inputs = rig.pipe.inputs
    inputs.put_joint_state(rig.pipe.joint_names, rig.q, [], taken_ns, received_ns)
    for cam in rig.pipe.camera_pipelines:
        assert rig.pipe.image_arrived(cam, taken_ns, received_ns)
        inputs.put_image(cam, rig.image, taken_ns, received_ns)


def _stream_rig(policy: MoEPolicy, bundle: LoadedBundle, merge: str, early: bool) -> Rig:
    """Stream mode, engaged, three ticks under AUTONOMY on one chunk."""
    rig = _rig(policy, bundle, policy__execution__mode="stream", policy__execution__merge=merge,
               policy__execution__revise_on_arrival=early, handover__blend_time_s=0.0)
    rig.engage()
    for _ in range(3):
        assert rig.tick().tick.policy_sent
    return rig


@pytest.mark.parametrize("merge", ["replace", "ensemble", "blend"])
@pytest.mark.parametrize("taken_ms", [2, -2, -22])
def test_stream_mode_sends_the_setpoint_on_the_way_as_a_chunk_arrives(
    policy: MoEPolicy, bundle: LoadedBundle, merge: str, taken_ms: int
) -> None:
    """A frame taken ``taken_ms`` after the last tick (before it: its chunk arrives after the
    tick; 22 ms before: a period-old frame, its first action due by then), its chunk ready
    5 ms after the tick: the early send is the setpoint for that instant, a quarter of the way
    from the tick's command to the command the next tick sends with the chunk (a twin
    pipeline without early sends, same chunk), never that command early; the next ticks go
    on as in the twin."""
    rig = _stream_rig(policy, bundle, merge, early=True)
    twin = _stream_rig(policy, bundle, merge, early=False)
    pipe = rig.pipe
    last_tick = rig.ros - PERIOD_NS
    before = pipe.safety.last_sent
    assert before is not None
    n = pipe.control_stats.obs_to_cmd.summary().count
    for r in (rig, twin):
        r.clock.advance_ns(-PERIOD_NS + 5 * MS)  # back to 5 ms after the last tick
        _sense_at(r, last_tick + taken_ms * MS, last_tick + 3 * MS)
        assert r.pipe.infer_once(last_tick + 5 * MS).offered == ADDED
    published: list[ControlOutput] = []
    assert not twin.pipe.send_on_arrival(last_tick + 5 * MS, published.append)
    assert pipe.send_on_arrival(last_tick + 5 * MS, published.append)
    (early,) = published
    assert not pipe.send_on_arrival(last_tick + 6 * MS, published.append)  # once per chunk
    for r in (rig, twin):
        r.clock.advance_ns(PERIOD_NS - 5 * MS)
    nxt, twin_nxt = rig.tick(), twin.tick()
    np.testing.assert_allclose(nxt.sent, twin_nxt.sent, atol=1e-12)  # the tick as without
    np.testing.assert_allclose(early.sent, before + 0.25 * (twin_nxt.sent - before), atol=1e-9)
    assert not np.allclose(twin_nxt.sent, before, atol=1e-6)  # the arm moves
    assert [a.name for a, _ in early.commands] == ["left_arm", "right_arm"]
    np.testing.assert_allclose(early.commands[1][1], early.sent[7:])
    assert early.trajectories == [] and early.tick.events == ()
    assert early.stamp_ns == last_tick + 5 * MS
    o2c = pipe.control_stats.obs_to_cmd.values()
    # not 18, 22 or 42 ms at the next tick
    assert len(o2c) == n + 1 and o2c[-1] == pytest.approx(5.0 - taken_ms)
    assert pipe.safety.diagnostics()[2]["revisions"] == "1"
    stats = pipe.control_stats
    assert stats.sent_on_arrival == 1 and stats.first_commands >= 2
    control = dict(pipe.diagnostic_tasks(last_tick + 5 * MS, True)[3].values)
    assert control[Key.SENT_ON_ARRIVAL] == f"1/{stats.first_commands}"
    for _ in range(3):
        np.testing.assert_allclose(rig.tick().sent, twin.tick().sent, atol=1e-12)
    assert pipe.control_stats.obs_to_cmd.summary().count == n + 1


@pytest.mark.parametrize("mode", ["stream", "chunk"])
def test_a_revision_never_starts_nearer_the_next_tick_than_the_longest_took(
    policy: MoEPolicy, bundle: LoadedBundle, mode: str
) -> None:
    """Stream mode, a revision that took 3 ms (its publication): a chunk ready 2 ms before the
    next tick is left to that tick (a revision then could delay it), one ready 4 ms before is
    sent at once. Chunk mode sends all three at once (the tick would send the trajectories
    itself, the same work)."""
    if mode == "stream":
        rig = _stream_rig(policy, bundle, "blend", early=True)
    else:
        rig = _rig(policy, bundle, policy__execution__mode="chunk", handover__blend_time_s=0.0)
        rig.engage()
        for _ in range(3):
            assert rig.tick().tick.policy_sent
    pipe = rig.pipe

    def slow(_out: Any) -> None:
        rig.clock.advance_ns(3 * MS)

    def arrives(before_tick_ms: int) -> bool:
        """A frame 1 ms old, its chunk ready ``before_tick_ms`` before the next tick; the
        early send's answer, then that tick."""
        rig.clock.advance_ns(-before_tick_ms * MS)
        now = rig.ros - before_tick_ms * MS
        _sense_at(rig, now - MS, now)
        assert pipe.infer_once(now).offered == ADDED
        sent = pipe.send_on_arrival(now, slow)
        rig.clock.advance_ns(rig.ros - now - (3 * MS if sent else 0))
        n = pipe.control_stats.first_commands
        assert rig.tick().tick.policy_sent
        assert pipe.control_stats.first_commands == n + (0 if sent else 1)  # the tick's
        return sent

    assert arrives(15)  # the first: 3 ms
    assert arrives(2) == (mode == "chunk")
    assert arrives(4)
    assert pipe.control_stats.sent_on_arrival == (3 if mode == "chunk" else 2)


def test_stream_mode_sends_no_revision_the_filter_would_hold(
    policy: MoEPolicy, bundle: LoadedBundle
) -> None:
    """Joint states stale when the chunk arrives: no revision (the next tick holds), and the
    filter's state is the tick's."""
    rig = _stream_rig(policy, bundle, "blend", early=True)
    pipe = rig.pipe
    taken = rig.ros - PERIOD_NS - 2 * MS
    _sense_at(rig, taken, taken + MS)
    tick = rig.tick()
    rig.clock.advance_ns(-PERIOD_NS + 5 * MS)  # 5 ms after that tick
    assert pipe.infer_once(rig.ros - PERIOD_NS + MS).offered == ADDED
    published: list[ControlOutput] = []
    assert not pipe.send_on_arrival(taken + 1_000 * MS, published.append)  # joints stale
    assert published == []
    np.testing.assert_allclose(pipe.safety.last_sent, tick.sent)
    assert pipe.safety.diagnostics()[2]["revisions"] == "0"


@pytest.mark.parametrize("case", ["hold", "blending", "stream_due", "off", "stream_default"])
def test_a_chunk_waits_for_the_tick_unless_the_last_tick_was_policy_driven(
    policy: MoEPolicy, bundle: LoadedBundle, case: str
) -> None:
    """Under HOLD, while the engage blend runs, with send_on_arrival off, in stream mode when
    the next tick is due (a period has passed since the last), or in stream mode by default
    (revise_on_arrival off: one command per period), the early send sends nothing and the
    next tick decides (and, in chunk mode, sends)."""
    stream = case.startswith("stream")
    changes: dict[str, Any] = {
        "policy__execution__mode": "stream" if stream else "chunk",
        "policy__execution__send_on_arrival": case != "off",
        "handover__blend_time_s": 0.5 if case == "blending" else 0.0,
        "policy__execution__revise_on_arrival": case == "stream_due",
    }
    rig = _rig(policy, bundle, **changes)
    pipe = rig.pipe
    if case == "hold":
        rig.sense()
        rig.tick()
    else:
        rig.engage()
        rig.tick()
    rig.sense()
    assert pipe.infer_once(rig.ros).offered == ADDED
    published: list[Any] = []
    mid = PERIOD_NS // 2 if case == "stream_default" else 0  # revise_on_arrival would send
    rig.clock.advance_ns(-mid)
    assert not pipe.send_on_arrival(rig.ros, published.append) and published == []
    rig.clock.advance_ns(mid)
    out = rig.tick()
    if stream:
        assert out.commands and out.trajectories == []
    else:
        assert [a.name for a, _ in out.trajectories] == ["left_arm", "right_arm"]
    if case == "hold":
        assert out.tick.mode == Mode.HOLD and len(out.trajectories[0][1].points) == 1
    if case == "blending":
        assert out.tick.blend_alpha is not None and out.tick.blend_alpha < 1.0


def test_teleop_drives_and_the_policy_runs_in_its_shadow(
    policy: MoEPolicy, bundle: LoadedBundle
) -> None:
    rig = _rig(policy, bundle, handover__initial_mode="TELEOP")
    pipe = rig.pipe
    with pytest.raises(InputError, match="lacks joints"):
        pipe.put_teleop(["left_waist"], [0.1])
    pipe.put_teleop(pipe.joint_names, rig.q + 0.01)
    pipe.put_deadman(True)
    rig.sense()
    res = pipe.infer_once(rig.ros)
    rig.tick()
    rig.tick()
    pipe.put_teleop(pipe.joint_names, rig.q + 0.01)
    rig.sense()
    res = pipe.infer_once(rig.ros)
    assert res is not None and res.router is not None and res.router.shadow
    rig.tick()
    out = rig.tick()
    assert out.tick.mode == Mode.TELEOP
    assert out.shadow is not None and out.sent is not None
    assert not np.allclose(out.shadow, out.sent)  # the policy's command is only shown


def test_a_new_activation_holds_where_the_robot_is_not_where_it_was(rig: Rig) -> None:
    """Moved (or reset) while the node was inactive, the robot is held at its new pose after
    activation; before, HOLD kept commanding the last pose sent before the deactivation."""
    rig.sense()
    first = rig.tick()
    assert first.tick.mode == Mode.HOLD and first.sent is not None
    np.testing.assert_allclose(first.sent, rig.q)
    rig.q = rig.q + 0.2  # the robot moved while the node was inactive
    rig.pipe.start()  # activation
    rig.sense()
    out = rig.tick()
    np.testing.assert_allclose(out.sent, rig.q)


def test_the_mode_is_published_once_per_change_in_order(rig: Rig) -> None:
    seen: list[str] = []
    rig.pipe.publish_mode(seen.append)
    rig.pipe.publish_mode(seen.append)
    assert seen == ["HOLD"]
    rig.pipe.arbiter.estop()
    rig.pipe.publish_mode(seen.append)
    rig.pipe.arbiter.reset_estop()
    rig.pipe.publish_mode(seen.append)
    assert seen == ["HOLD", "ESTOP", "HOLD"]


# ---------------------------------------------------------------------------- frames, diagnostics


def test_frames_through_the_worker_reach_the_inputs_and_rejections_are_counted(
    rig: Rig,
) -> None:
    pipe = rig.pipe
    warnings: list[str] = []

    def done(camera: str, info: Any, err: ImageError | None) -> None:
        line = pipe.frame_done(camera, info, err, rig.ros)
        if line is not None:
            warnings.append(line)

    frames = FrameWorker(pipe.camera_pipelines, pipe.inputs.put_image, done)
    good = np.full((96, 128, 3), 7, np.uint8)
    assert pipe.image_arrived("top", rig.ros, rig.ros)
    assert not pipe.image_arrived("wrist", rig.ros, rig.ros)  # not a bundle camera
    frames.submit("top", RawFrame(96, 128, "rgb8", 128 * 3, good.tobytes()), rig.ros, rig.ros)
    frames.run_pending()
    assert pipe.inputs.images()["top"].image[0, 0, 0] == 7
    pipe.image_arrived("top", rig.ros, rig.ros)
    frames.submit("top", RawFrame(96, 128, "16UC1", 128 * 2, bytes(96 * 128 * 2)),
                  rig.ros, rig.ros)
    frames.run_pending()
    assert len(warnings) == 1 and "cameras/top/image_raw" in warnings[0]
    assert "16UC1" in warnings[0]
    assert any("16UC1" in e for e in pipe.inputs.recent_errors(rig.ros))
    rep = pipe.camera_stats["top"].report(rig.ros)
    assert (rep.received, rep.accepted, rep.rejected) == (2, 1, 1)


def test_diagnostic_tasks_one_per_concern(rig: Rig) -> None:
    rig.sense()
    rig.pipe.infer_once(rig.ros)
    for _ in range(10):
        rig.tick()
    tasks = rig.pipe.diagnostic_tasks(rig.ros, True, {"top": 3}, lambda topic: 1)
    assert [t.task for t in tasks] == [INPUTS, INFERENCE, ROUTER, CONTROL_LOOP, SAFETY]
    inputs = dict(tasks[0].values)
    assert inputs["top frames superseded"] == 3 and inputs["top frames received"] == 1
    assert tasks[0].message.startswith("all inputs fresh")  # 0.2 s old: at the max age
    for _ in range(5):
        rig.tick()
    stale = rig.pipe.diagnostic_tasks(rig.ros, True)[0]
    assert stale.level == Level.ERROR and stale.message.startswith("stale: joint_states")
    assert rig.pipe.diagnostic_tasks(rig.ros, False)[0].level == Level.WARN  # inactive
    control = dict(tasks[3].values)
    assert control[Key.ACHIEVED_RATE_HZ] == pytest.approx(50.0)
    assert control[Key.TARGET_RATE_HZ] == 50.0
    assert dict(tasks[1].values)["chunks"] == 1
    assert dict(tasks[4].values)[Key.MODE] == "HOLD"


def _camera_run(pipe: PolicyPipeline, clock: FakeClock, ticks: int, offset_ns: int,
                mark: int) -> tuple[list[float], list[float]]:
    """The control loop itself (``pipe.control_loop.run`` on the FakeClock) with a 15 Hz
    camera whose chunks arrive ``offset_ns`` after each frame (plus up to 0.4 ms): frames are
    sensed and inferred at their arrival instants between the ticks, autonomy engages after
    the first chunk. The chunk-to-tick waits before and after tick ``mark`` (ms)."""
    rng = np.random.default_rng(3)
    c0 = clock.now_ns()
    arrivals = [c0 + round(k * 1e9 / 15) + offset_ns + int(rng.integers(0, 400_000))
                for k in range(1, ticks // 3)]
    q = np.zeros(len(pipe.joint_names))
    image = np.full((96, 128, 3), 90, np.uint8)

    def arrive(t: int) -> None:
        clock.advance_ns(max(0, t - clock.now_ns()))
        ros = T0_ROS + clock.now_ns() - c0
        stamp = ros - offset_ns  # the frame was taken offset_ns before its chunk arrived
        pipe.inputs.put_joint_state(pipe.joint_names, q, [], stamp, ros)
        for cam in pipe.camera_pipelines:
            pipe.inputs.put_image(cam, image, stamp, ros)
        assert pipe.infer_once(ros) is not None

    waits = pipe.control_stats.tick_wait
    before: list[float] = []

    def body(step: int, now: int) -> None:
        nonlocal before
        pipe.control_step(step, now, T0_ROS + now - c0)
        if pipe.policy_warm and pipe.arbiter.mode != Mode.AUTONOMY:
            pipe.arbiter.engage_autonomy(True)  # once a tick has seen the first chunk
        if step == mark:
            before = waits.values()
            waits.reset()
        # the chunks that arrive before the next tick (0.25 ms short of it: a slewing grid
        # may move it by up to 0.2 ms), at their instants
        origin = pipe.control_loop.grid_origin_ns
        assert origin is not None
        while arrivals and arrivals[0] < origin + (step + 1) * PERIOD_NS - 250_000:
            arrive(arrivals.pop(0))

    pipe.control_loop.run(body, threading.Event(), max_ticks=ticks)
    return before, waits.values()


@pytest.mark.parametrize("align", [True, False])
def test_tick_alignment_moves_the_ticks_to_just_after_the_chunks(
    policy: MoEPolicy, bundle: LoadedBundle, align: bool
) -> None:
    """15 Hz camera, 50 Hz control, chunks 0.5 ms after a tick of the start-up grid: they wait
    19.5 ms for it. Aligned, the loop slews its grid so that no chunk waits more than two
    thirds of a period plus the margin; unaligned the 19.5 ms wait stays."""
    rig = _rig(policy, bundle, policy__align_ticks=align)
    pipe, clock = rig.pipe, rig.clock
    before, after = _camera_run(pipe, clock, 450, offset_ns=20 * MS + MS // 2, mark=200)
    assert max(before) >= 19.0
    shift = dict(pipe.diagnostic_tasks(T0_ROS, True)[3].values)[Key.TICK_SHIFT_MS]
    if align:
        assert max(after) <= 20 * 2 / 3 + 1.0 + 0.4 + 0.01
        assert min(after) >= 0.5  # none just missed its tick
        assert pipe.aligner is not None and pipe.aligner.shifts == 1
        assert shift != "off" and abs(shift) > 1.0
    else:
        assert max(after) >= 19.0 and shift == "off"


# ---------------------------------------------------------------------------- rtc


@pytest.fixture(scope="module")
def smp() -> tuple[LoadedBundle, MoEPolicy]:
    bundle = load_bundle(REPO / "models" / "demo_smp")
    return bundle, MoEPolicy(bundle, make_backend("onnxruntime", intra_op_threads=1))


def test_rtc_is_refused_for_a_direct_family_and_without_latency_compensation(
    bundle: LoadedBundle, smp: tuple[LoadedBundle, MoEPolicy]
) -> None:
    problems = configure_problems(_cfg(policy__execution__merge="rtc"), bundle.manifest, "b")
    assert any("family 'adamoe'" in p and "ensemble, blend or replace" in p for p in problems)
    cfg = _cfg(policy__execution__merge="rtc", policy__execution__latency_compensation=False,
               policy__execution__rtc_execution_horizon=20)
    problems = configure_problems(cfg, smp[0].manifest, "b")
    assert any("latency_compensation: true" in p for p in problems)
    assert any("rtc_execution_horizon 20" in p and "chunk length 20" in p for p in problems)
    assert configure_problems(_cfg(policy__execution__merge="rtc"), smp[0].manifest, "b") == []


def _rtc_run(smp: tuple[LoadedBundle, MoEPolicy], merge: str, frozen: int) -> dict[str, Any]:
    """Chunks A and B each take ``frozen`` control ticks to compute (the older chunk drives
    them); B observes a robot that moved. Returns A (step -> command), B's request and
    chunk, the proposals from B's start on, and the pipeline."""
    bundle, policy = smp
    rig = _rig(policy, bundle, policy__execution__merge=merge, handover__blend_time_s=0.0)
    rig.engage()
    pipe = rig.pipe

    def slow_inference() -> tuple[Any, np.ndarray, dict[int, Any]]:
        rig.sense()
        req = pipe.begin_inference(rig.ros)
        assert req is not None
        out = pipe.run_policy(req)
        sent = {}
        for _ in range(frozen):  # the steps that run while it is computed
            rig.sense()
            step = rig.step
            sent[step] = rig.tick().tick.policy_command
        assert pipe.finish_inference(req, out).offered == ADDED
        return req, out.actions, sent

    slow_inference()  # chunk A (rtc: records the delay B's guidance freezes)
    rig.tick()
    base = rig.step
    rows = pipe.timeline.committed(base, 100)  # what A commands from here on (robot order)
    a = {base + i: row for i, row in enumerate(rows)}
    rig.q[:] = 0.2  # the robot moved: B's observation differs from A's
    req, b, sent = slow_inference()
    for _ in range(4):
        rig.sense()
        step = rig.step
        sent[step] = rig.tick().tick.policy_command
    return {"a": a, "req": req, "b": b, "sent": sent, "pipe": pipe}


def test_rtc_through_the_pipeline_honours_the_frozen_prefix_and_keeps_the_seam(
    smp: tuple[LoadedBundle, MoEPolicy],
) -> None:
    """The same run with ``replace`` and with ``rtc`` (same noise: the policy's stream restarts
    at start()). The guidance is what chunk A commands for B's steps, the frozen prefix the
    delay measured on the previous chunk; B's prefix follows A, the seam shrinks."""
    frozen = 3
    plain = _rtc_run(smp, "replace", frozen)
    # a first rtc run measures the delay; rtc's estimate is the largest recent one
    rtc = _rtc_run(smp, "rtc", frozen)
    req, pipe = rtc["req"], rtc["pipe"]
    idx = pipe.timeline.action_idx
    t = req.start_step
    assert req.guidance is not None and plain["req"].guidance is None
    want = np.array([rtc["a"][s] for s in range(t, t + 20) if s in rtc["a"]])[:, idx]
    np.testing.assert_allclose(req.guidance.committed, want)
    # the delay of B was recorded: the next chunk freezes the steps B's inference took
    assert pipe.delays.estimate() == frozen
    d = frozen
    committed = req.guidance.committed[:d]
    err_plain = np.abs(plain["b"][:d] - committed).max()
    err_rtc = np.abs(rtc["b"][:d] - committed).max()
    assert req.guidance.delay_steps == frozen  # A's measured delay
    # the demo bundle's active skills do not span every chunk (test_rtc.py's full-span model
    # shows the tight bound); here the guided prefix is about half as far (0.018 vs 0.034)
    assert err_rtc < 0.6 * err_plain, (err_rtc, err_plain)
    # the seam: the first step B drives, against what A would have commanded there
    switch = t + d
    for run in (plain, rtc):
        assert run["sent"][switch - 1] is not None
        np.testing.assert_allclose(run["sent"][switch - 1], run["a"][switch - 1])  # frozen: A
    seam = {name: float(np.abs(run["sent"][switch] - run["a"][switch]).max())
            for name, run in (("replace", plain), ("rtc", rtc))}
    assert seam["rtc"] < 0.5 * seam["replace"], seam  # 0.009 vs 0.035 rad
