"""moe_policy_ros: ROS 2 runtime for Mixture-of-Experts manipulation policies."""

from moe_policy_ros._requirements import check as _check_requirements

# Stop at import, with one line that says what to install, when a library is too old (a
# distro's python3-pydantic 1.x); see moe_policy_ros/_requirements.py.
_check_requirements()
