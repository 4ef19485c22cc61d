"""Library versions the package cannot run without, checked once when it is imported.

A ROS 2 robot gets its Python libraries from rosdep, i.e. from the distribution: Ubuntu 24.04
(Jazzy) and Debian 12 ship ``python3-pydantic`` 1.10, Ubuntu 22.04 (Humble) 1.8, while the
schema (:mod:`moe_policy_ros.core.config`, :mod:`moe_policy_ros.core.manifest`) is pydantic 2.
Without this check every node dies deep in an import (``cannot import name
'field_validator'``); with it, a node, ``ros2 launch`` and the CLI stop at start with one line
that names the package, the version found, the version needed and the command that fixes it.

Only hard blockers are listed here, each with the oldest version a test run covered
(``make test-distro``: numpy 1.26, OpenCV 4.6, onnx 1.15, ONNX Runtime 1.17, pydantic 2.6 run
the core and node tests). ``moe-policy-ros doctor`` reports the rest.
"""

from __future__ import annotations

from importlib import metadata

#: distribution -> (minimum version, pip requirement that fixes it, why)
MINIMUM: dict[str, tuple[tuple[int, ...], str, str]] = {
    "pydantic": ((2, 0), "pydantic>=2,<3", "the configuration and manifest schemas are v2"),
}

FIX_HINT = (
    "python3 -m pip install --user --break-system-packages '{req}' (a distro's python3-{dist} "
    "is older; or use a venv made with --system-site-packages)"
)


class DependencyVersionError(SystemExit):
    """A library the package needs is missing or too old; the message is one line.

    A ``SystemExit``, so that a node, ``ros2 launch`` or the CLI stops with that line and no
    traceback; code that imports the package can still catch it by this type.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def parse_version(text: str) -> tuple[int, ...]:
    """Leading numeric release of a version string: '1.10.14' -> (1, 10, 14), '2.6.0b1' ->
    (2, 6, 0)."""
    out: list[int] = []
    for part in text.split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        out.append(int(digits))
        if len(digits) != len(part):
            break
    return tuple(out)


def installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def problems() -> list[str]:
    """One line per library that is missing or older than :data:`MINIMUM` (empty: all good)."""
    out = []
    for dist, (minimum, req, why) in MINIMUM.items():
        found = installed_version(dist)
        need = ".".join(map(str, minimum))
        if found is None:
            out.append(
                f"moe_policy_ros needs {dist}>={need} ({why}), but {dist} is not installed: "
                + FIX_HINT.format(req=req, dist=dist)
            )
        elif parse_version(found) < minimum:
            out.append(
                f"moe_policy_ros needs {dist}>={need} ({why}), found {dist} {found} "
                f"({_origin(dist)}): " + FIX_HINT.format(req=req, dist=dist)
            )
    return out


def _origin(dist: str) -> str:
    try:
        files = metadata.distribution(dist).locate_file("")
    except metadata.PackageNotFoundError:  # pragma: no cover - checked by the caller
        return "?"
    return f"in {files}"


def check() -> None:
    """Raise :class:`DependencyVersionError` (one line) when a hard requirement is not met."""
    found = problems()
    if found:
        raise DependencyVersionError(found[0])

