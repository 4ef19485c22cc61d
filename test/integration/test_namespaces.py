"""Two robots on one DDS domain: `moe-policy-ros up config/sim_dual_arm.yaml --namespace r1`
and `--namespace r2` side by side, each with its own aloha_sim and policy node.

The shipped file is used as it is: its `/**/moe_policy` and `/**/aloha_sim` sections reach the
nodes under any namespace, and its relative topic names follow the namespace. No crosstalk:
every topic either graph uses lives under its own namespace (the DDS graph shows exactly one
publisher, in the right namespace, for each), nothing is published on the root names, and
engaging r1's policy moves r1 only.
"""

from __future__ import annotations

import importlib.util
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("rclpy")
if importlib.util.find_spec("mujoco") is None or importlib.util.find_spec("gym_aloha") is None:
    pytest.skip("mujoco and gym-aloha are needed for aloha_sim", allow_module_level=True)

from helpers import REPO
from helpers.ros import UpProcess

if TYPE_CHECKING:
    from helpers.ros import RosClient

pytestmark = [pytest.mark.sim, pytest.mark.ros, pytest.mark.slow]

SIM_CFG = REPO / "config" / "sim_dual_arm.yaml"
NAMESPACES = ("r1", "r2")
#: every topic a graph uses, relative to its namespace (commands: execution.mode stream)
TOPICS = (
    "joint_states", "cameras/top/image_raw", "left_arm_controller/commands",
    "right_arm_controller/commands", "moe_policy/mode",
)


@pytest.fixture
def graphs(tmp_path: Path) -> Iterator[dict[str, UpProcess]]:
    ups = {
        ns: UpProcess([str(SIM_CFG), "--namespace", ns, "--duration", "240", "--log-level",
                       "warn"], tmp_path / f"up_{ns}.log")
        for ns in NAMESPACES
    }
    yield ups
    for u in ups.values():
        u.close()


def _endpoints(client: RosClient, topic: str, publishers: bool) -> set[tuple[str, str]]:
    get = client.node.get_publishers_info_by_topic if publishers else (
        client.node.get_subscriptions_info_by_topic)
    ends = {(i.node_namespace, i.node_name) for i in get(topic)}
    # DDS may announce an endpoint before its participant's node names arrive
    # (`_NODE_NAME_UNKNOWN_`): report nothing until every end is named, so callers wait.
    return set() if any(name.startswith("_NODE_") for _ns, name in ends) else ends


def test_two_namespaced_sim_graphs_run_side_by_side_without_crosstalk(
    graphs: dict[str, UpProcess], ros: ModuleType, wait_for: Callable[..., Any],
) -> None:
    from std_msgs.msg import String
    from std_srvs.srv import SetBool

    from moe_policy_ros.session import LATCHED_QOS

    client = ros.RosClient("namespaces_test")
    try:
        modes = {ns: client.record(String, f"/{ns}/moe_policy/mode", LATCHED_QOS)
                 for ns in NAMESPACES}
        for ns, u in graphs.items():
            wait_for(lambda u=u, ns=ns: f"[up] /{ns}/moe_policy: active" in u.log(), 150,
                     f"`up --namespace {ns}` to activate its policy (log: {u.log_path})")
        for ns in NAMESPACES:
            wait_for(lambda ns=ns: any(m.data == "HOLD" for _t, m in modes[ns]), 30,
                     f"/{ns}/moe_policy/mode HOLD")

        # the DDS graph: each topic has its own namespace's nodes on both ends, nothing else
        sim_ends = {"joint_states", "cameras/top/image_raw"}
        for ns in NAMESPACES:
            for rel in TOPICS:
                topic = f"/{ns}/{rel}"
                owner = "aloha_sim" if rel in sim_ends else "moe_policy"
                reader = "moe_policy" if rel in sim_ends else "aloha_sim"
                pubs = wait_for(lambda t=topic: _endpoints(client, t, True), 10, topic)
                assert pubs == {(f"/{ns}", owner)}, f"{topic}: publishers {pubs}"
                if rel != "moe_policy/mode":
                    subs = _endpoints(client, topic, False)
                    assert (f"/{ns}", reader) in subs, f"{topic}: subscribers {subs}"
                    assert all(n == f"/{ns}" for n, _ in subs - {("/", "namespaces_test")}), (
                        f"{topic}: subscribers from another namespace {subs}"
                    )
        for rel in TOPICS:
            assert not _endpoints(client, f"/{rel}", True), f"/{rel} has publishers"

        # engage r1 only: r1 goes to AUTONOMY, r2 stays in HOLD
        deadline = time.monotonic() + 60
        res = None
        while time.monotonic() < deadline:
            res = client.call(SetBool, "/r1/moe_policy/engage_autonomy",
                              SetBool.Request(data=True))
            if res.success:
                break
            time.sleep(0.3)
        assert res is not None and res.success, f"engage refused: {res and res.message}"
        wait_for(lambda: any(m.data == "AUTONOMY" for _t, m in modes["r1"]), 10, "r1 AUTONOMY")
        time.sleep(2.0)
        assert [m.data for _t, m in modes["r2"]] == ["HOLD"], modes["r2"]

        # both stop cleanly on SIGINT and leave no node behind
        kids = {ns: u.children() for ns, u in graphs.items()}
        for ns, k in kids.items():
            assert len(k) == 2, f"{ns}: expected aloha_sim + moe_policy, got {k}"
        for u in graphs.values():
            u.proc.send_signal(signal.SIGINT)
        for ns, u in graphs.items():
            assert u.proc.wait(timeout=30) == 0, u.log()
            for pid in kids[ns]:
                wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 10,
                         f"{ns} node {pid} to exit")
    finally:
        client.close()
