"""The policy node in-process with its own rclpy context (rclpy test_lifecycle style):
typed parameters from the schema, runtime validation, lifecycle transitions."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from moe_policy_ros.nodes.policy_node import PolicyNode  # noqa: E402

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def node() -> Iterator[PolicyNode]:
    ctx = rclpy.context.Context()
    rclpy.init(
        context=ctx,
        args=["--ros-args", "--params-file", str(REPO / "config" / "dual_arm.yaml")],
    )
    n = PolicyNode(context=ctx)
    try:
        yield n
    finally:
        n.destroy_node()
        rclpy.try_shutdown(context=ctx)


def test_schema_parameters_are_declared_with_descriptions(node: PolicyNode) -> None:
    # from the file
    assert node.get_parameter("policy.control_rate_hz").value == 50.0
    assert node.get_parameter("robot.left_arm.joints").value[0] == "left_waist"
    # schema defaults the file does not set are declared too
    assert node.get_parameter("safety.ood_energy_threshold").value == float("inf")
    desc = node.describe_parameter("handover.blend_time_s")
    assert desc.description  # units come from the schema's field description
    strat = node.describe_parameter("policy.routing.strategy").description
    assert "'topk'" in strat and "'sticky'" in strat
    assert node.describe_parameter("robot.left_arm.joints").read_only


def test_runtime_sets_are_validated_by_the_schema(node: PolicyNode) -> None:
    res = node.set_parameters([Parameter("policy.control_rate_hz", value=-5.0)])[0]
    assert not res.successful
    assert "policy.control_rate_hz" in res.reason and "-5.0" in res.reason
    assert node.get_parameter("policy.control_rate_hz").value == 50.0
    res = node.set_parameters([Parameter("policy.routing.strategy", value="top2")])[0]
    assert not res.successful and "'top2'" in res.reason
    ok = node.set_parameters([Parameter("policy.routing.k", value=3)])[0]
    assert ok.successful
    ro = node.set_parameters([Parameter("robot.left_arm.joints", value=["x"])])[0]
    assert not ro.successful


def test_lifecycle_transitions_in_process(node: PolicyNode) -> None:
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node._pipe is not None and node._pipe.policy.strategy.name == "topk"
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert {"inference", "control"} <= {t.name for t in threading.enumerate()}
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    # deactivate joined them
    assert not {"inference", "control"} & {t.name for t in threading.enumerate()}
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert node._pipe is None


def test_configure_sets_the_gil_switch_interval(node: PolicyNode) -> None:
    """The control loop's thread waits up to the GIL switch interval for another thread to
    let go: Python's 5 ms default was the 5 ms of period jitter p99 at 100 Hz
    (docs/benchmarks.md), so configure sets the parameter's interval for the process."""
    before = sys.getswitchinterval()
    try:
        node.set_parameters([Parameter("policy.gil_switch_interval_ms", value=0.25)])
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert sys.getswitchinterval() == pytest.approx(0.25e-3)
        bad = node.set_parameters([Parameter("policy.gil_switch_interval_ms", value=0.0)])[0]
        assert not bad.successful and "gil_switch_interval_ms" in bad.reason
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    finally:
        sys.setswitchinterval(before)


def test_configure_fails_cleanly_on_a_missing_bundle(node: PolicyNode) -> None:
    node.set_parameters([Parameter("policy.bundle", value="/nonexistent/bundle")])
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "/nonexistent/bundle" in node._configure_error
    node.set_parameters([Parameter("policy.bundle", value="models/demo_smp")])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node._pipe is not None and node._pipe.bundle.manifest.family == "smp"


def test_routing_fields_the_file_does_not_set_stay_the_bundles(node: PolicyNode) -> None:
    """A bundle exported with top-1 runs top-1 unless the parameter file (or a set) says k."""
    from moe_policy_ros.core.config import RoutingConfig, config_from_params
    from moe_policy_ros.core.runtime import merge_routing
    from moe_policy_ros.nodes.params import nested_parameters

    bundle_default = RoutingConfig(strategy="topk", k=1, tau=0.7)
    routing = config_from_params(nested_parameters(node)).policy.routing
    assert not {"k", "tau"} & routing.model_fields_set  # dual_arm.yaml leaves them unset
    assert node.has_parameter("policy.routing.k")
    assert node._parameters["policy.routing.k"].value is None  # declared typed, unset
    assert "unset = the bundle's value" in node.describe_parameter("policy.routing.k").description
    merged = merge_routing(bundle_default, routing)
    assert (merged.strategy, merged.k, merged.tau) == ("topk", 1, 0.7)
    assert node.set_parameters([Parameter("policy.routing.k", value=3)])[0].successful
    routing = config_from_params(nested_parameters(node)).policy.routing
    assert merge_routing(bundle_default, routing).k == 3


def test_configure_takes_rtc_for_a_flow_bundle_and_refuses_it_for_a_direct_one(
    node: PolicyNode,
) -> None:
    node.set_parameters([Parameter("policy.bundle", value="models/demo_adamoe")])
    assert node.set_parameters([Parameter("policy.execution.merge", value="rtc")])[0].successful
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    err = node._configure_error
    assert "policy.execution.merge: 'rtc'" in err and "family 'adamoe'" in err
    node.set_parameters([Parameter("policy.bundle", value="models/demo_smp")])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
