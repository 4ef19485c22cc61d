"""The README's commands exist: every `moe-policy-ros ...` line parses with the real parser
(subcommand and flags), every `make` target is in the Makefile, and every `ros2 launch` /
`ros2 run` of this package names a launch file, launch argument or executable that exists.

Commands come from the fenced shell blocks (continuation lines joined, comments dropped,
`&&`/`;`/`|` chains split) and from inline code spans that start with `moe-policy-ros ` or
`make `, so the README cannot drift from the tool. A block line must parse completely; a span
in the prose is a reference (`moe-policy-ros up` names the command), so there only the
subcommand and the flags it shows must exist.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from moe_policy_ros.cli import _COMMANDS, build_parser
from moe_policy_ros.graph import LAUNCH_ARGUMENTS

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
EXECUTABLES = {"policy_node", "aloha_sim", "realsense_camera"}


def shell_commands(markdown: str) -> list[tuple[int, list[str], bool]]:
    """(line number, argv, complete) of every simple command in the shell blocks (complete)
    and code spans (references)."""
    out: list[tuple[int, list[str], bool]] = []
    lines = markdown.splitlines()
    i = 0
    in_block = False
    lang = ""
    pending = ""
    start = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^\s*```(\S*)\s*$", line)
        if fence:
            in_block, lang = (not in_block, fence.group(1).lower()) if not in_block else (
                False, "")
            i += 1
            continue
        if in_block and lang in SHELL_LANGS:
            if not pending:
                start = i + 1
            text = line.lstrip("$ ") if lang == "console" else line
            if text.rstrip().endswith("\\"):
                pending += text.rstrip()[:-1] + " "
            else:
                out += [(start, argv, True) for argv in _split(pending + text)]
                pending = ""
        elif not in_block:
            for span in re.findall(r"`([^`]+)`", line):
                if span.startswith(("moe-policy-ros ", "make ")) or span in (
                        "moe-policy-ros", "make"):
                    out += [(i + 1, argv, False) for argv in _split(span)]
        i += 1
    return out


def _split(command: str) -> list[list[str]]:
    lex = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    lex.commenters = "#"
    argvs: list[list[str]] = [[]]
    for tok in lex:
        if tok and set(tok) <= set(";&|"):
            argvs.append([])
        else:
            argvs[-1].append(tok)
    return [a for a in argvs if a]


def makefile_targets(makefile: Path) -> set[str]:
    text = makefile.read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M)
            if not m.group(1).startswith(".")}


def _subparser(sub: str) -> argparse.ArgumentParser:
    parser = build_parser(sub)
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[sub]


def check_command(argv: list[str], targets: set[str], complete: bool = True) -> str:
    """'' when ``argv`` is a command of this project that exists, else what is wrong.
    ``complete=False``: a reference in prose (required arguments may be left out)."""
    if argv[0] == "moe-policy-ros":
        sub = next((a for a in argv[1:] if not a.startswith("-")), None)
        if not complete and sub is None:
            return ""
        if sub not in _COMMANDS:
            return f"no subcommand {sub!r} (have {sorted(_COMMANDS)})"
        if not complete:
            flags = {o for a in _subparser(sub)._actions for o in a.option_strings}
            bad = [t.split("=")[0] for t in argv[2:] if t.startswith("-")
                   and t.split("=")[0] not in flags]
            return f"{sub} has no {bad}" if bad else ""
        parser = build_parser(sub)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                args = parser.parse_args(argv[1:])
        except SystemExit as exc:
            if exc.code not in (0, None):
                return err.getvalue().strip().splitlines()[-1]
            return ""
        return f"{sub}: its module does not import" if getattr(
            args, "_import_error", None) else ""
    if argv[0] == "make":
        missing = [t for t in argv[1:] if not t.startswith("-") and "=" not in t
                   and t not in targets]
        return f"no make target {missing}" if missing else ""
    if argv[:3] == ["ros2", "launch", "moe_policy_ros"]:
        launch = argv[3] if len(argv) > 3 else ""
        if not (REPO / "launch" / launch).is_file():
            return f"no launch file {launch!r}"
        names = {a[0] for a in LAUNCH_ARGUMENTS} - ({"sim"} if launch.startswith("sim_") else
                                                      set())
        bad = [a for a in argv[4:] if ":=" in a and a.split(":=")[0] not in names]
        return f"{launch} declares no {bad}" if bad else ""
    if argv[:3] == ["ros2", "run", "moe_policy_ros"]:
        exe = argv[3] if len(argv) > 3 else ""
        return "" if exe in EXECUTABLES else f"no executable {exe!r}"
    return ""


def test_every_readme_command_exists() -> None:
    targets = makefile_targets(REPO / "Makefile")
    commands = shell_commands(README.read_text())
    ours = [(n, a, c) for n, a, c in commands if a[0] in ("moe-policy-ros", "make")
            or a[:3] in (["ros2", "launch", "moe_policy_ros"], ["ros2", "run", "moe_policy_ros"])]
    assert len(ours) >= 10, f"found only {ours}"
    used = {a[1] for _n, a, c in ours if a[0] == "moe-policy-ros" and len(a) > 1 and c}
    assert {"doctor", "inspect", "up"} <= used, used
    problems = [f"README.md:{n}: {' '.join(a)}: {why}" for n, a, c in ours
                if (why := check_command(a, targets, c))]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- the checker itself


SAMPLE = """
Text with `moe-policy-ros inspect models/x --json`, `moe-policy-ros up` and `make demo`.

```bash
make test-distro   # comment
moe-policy-ros up cfg.yaml --namespace r1 \\
   --model models/demo_smp && moe-policy-ros monitor --once
ros2 launch moe_policy_ros sim_dual_arm.launch.py namespace:=r1
```

```python
moe-policy-ros not-shell
```
"""


def test_the_checker_reads_blocks_spans_and_continuations() -> None:
    found = shell_commands(SAMPLE)
    assert [c for _n, _a, c in found] == [False] * 3 + [True] * 4
    cmds = [a for _n, a, _c in found]
    assert cmds == [
        ["moe-policy-ros", "inspect", "models/x", "--json"],
        ["moe-policy-ros", "up"],
        ["make", "demo"],
        ["make", "test-distro"],
        ["moe-policy-ros", "up", "cfg.yaml", "--namespace", "r1", "--model", "models/demo_smp"],
        ["moe-policy-ros", "monitor", "--once"],
        ["ros2", "launch", "moe_policy_ros", "sim_dual_arm.launch.py", "namespace:=r1"],
    ]
    targets = makefile_targets(REPO / "Makefile")
    verdicts = [check_command(a, targets, c) for _n, a, c in found]
    assert verdicts == [""] * len(found), verdicts
    assert "required" in check_command(["moe-policy-ros", "up"], targets)  # in a block
    assert "has no ['--bogus']" in check_command(["moe-policy-ros", "up", "--bogus"], targets,
                                                 complete=False)


@pytest.mark.parametrize(
    ("command", "complaint"),
    [
        ("moe-policy-ros inspect", "required"),
        ("moe-policy-ros inspect models/x --verbose", "unrecognized arguments: --verbose"),
        ("moe-policy-ros launch x.yaml", "no subcommand 'launch'"),
        ("moe-policy-ros up x.yaml --sim maybe", "invalid choice"),
        ("make deploy", "no make target ['deploy']"),
        ("ros2 launch moe_policy_ros sim_dual_arm.launch.py sim:=true", "declares no"),
        ("ros2 launch moe_policy_ros robot.launch.py", "no launch file"),
        ("ros2 run moe_policy_ros policy", "no executable 'policy'"),
    ],
)
def test_the_checker_catches_a_drifted_command(command: str, complaint: str) -> None:
    (argv,) = _split(command)
    assert complaint in check_command(argv, makefile_targets(REPO / "Makefile"))


def test_makefile_targets_parse() -> None:
    targets = makefile_targets(REPO / "Makefile")
    assert {"setup", "demo", "test", "lint"} <= targets
    assert not any(t.startswith(".") or t in ("export", "SHELL") for t in targets), targets
