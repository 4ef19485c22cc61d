"""ament_python setup for moe_policy_ros (colcon in a ROS 2 workspace, or plain pip)."""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "moe_policy_ros"
HERE = Path(__file__).parent


def _tree(folder: str) -> list[tuple[str, list[str]]]:
    """data_files entries installing folder/** under share/<pkg>/folder, keeping subdirs."""
    entries: dict[str, list[str]] = {}
    for path in sorted((HERE / folder).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            rel = path.relative_to(HERE)
            entries.setdefault(f"share/{PACKAGE}/{rel.parent.as_posix()}", []).append(
                rel.as_posix()
            )
    return sorted(entries.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *_tree("launch"),
        *_tree("config"),
        *_tree("models"),
        *_tree("rqt"),
        *_tree("security"),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="moe_policy_ros maintainers",
    maintainer_email="maintainers@moe-policy-ros.dev",
    description="ROS 2 runtime for Mixture-of-Experts manipulation policies",
    license="Apache-2.0",
    tests_require=["pytest"],
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            f"policy_node = {PACKAGE}.nodes.policy_node:main",
            f"aloha_sim = {PACKAGE}.nodes.aloha_sim:main",
            f"realsense_camera = {PACKAGE}.nodes.realsense_camera:main",
            f"moe-policy-ros = {PACKAGE}.cli:main",
        ],
    },
)
