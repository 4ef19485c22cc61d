"""spin_node's shutdown: a signal stops the spin between callbacks, never inside one."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("rclpy")

from helpers import REPO
from helpers.ros import node_env

# A node whose timer callback signals its own process, then keeps working: the work after the
# signal must finish, the spin must stop, on_shutdown must run, and the process exits 0.
PROBE = r'''
import os, signal, sys, time
import rclpy
from rclpy.node import Node
from moe_policy_ros.nodes.common import spin_node

rclpy.init()
node = Node("signal_probe")
steps = []

def tick():
    timer.cancel()
    steps.append("signalled")
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    time.sleep(0.3)  # a KeyboardInterrupt would be raised here
    steps.append("finished")

timer = node.create_timer(0.05, tick)
spin_node(node, on_shutdown=lambda: steps.append("on_shutdown"))
print(",".join(steps), flush=True)
'''


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_during_a_callback_lets_it_finish_then_shuts_down(sig: str) -> None:
    """Ctrl-C (SIGINT) or a launch's SIGTERM while a callback runs: the callback completes,
    the spin stops, clean-up runs, no traceback, exit 0. (A KeyboardInterrupt landing while
    rclpy converted a message once crashed the policy node with a pybind11 RuntimeError.)"""
    proc = subprocess.run([sys.executable, "-c", PROBE, sig], env=node_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout.strip().splitlines()[-1] == "signalled,finished,on_shutdown", proc.stdout


def test_spin_node_restores_python_signal_handlers() -> None:
    """Handlers a caller installed from Python are back once spin_node returns."""
    probe = PROBE.replace('print(",".join(steps), flush=True)',
                          'print(signal.getsignal(signal.SIGINT) is mine)')
    probe = probe.replace("rclpy.init()\n", "rclpy.init()\nmine = lambda *a: None\n"
                          "signal.signal(signal.SIGINT, mine)\n")
    proc = subprocess.run([sys.executable, "-c", probe, "SIGTERM"], env=node_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "True", proc.stdout


STARTUP_PROBE = r'''
import os, signal, time
from rclpy.node import Node
from moe_policy_ros.nodes.common import init_ros, spin_node

init_ros()
os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the node is still starting
time.sleep(0.3)  # a KeyboardInterrupt would be raised here, in the middle of the start
node = Node("startup_probe")
print("constructed", flush=True)
t0 = time.monotonic()
spin_node(node)
print(f"stopped after {time.monotonic() - t0:.2f} s", flush=True)
'''


def test_ctrl_c_during_start_up_finishes_the_start_then_shuts_down() -> None:
    """With init_ros a Ctrl-C before spinning never raises inside the start-up: the node is
    built, spin_node returns at once, the process exits 0 without a traceback."""
    proc = subprocess.run([sys.executable, "-c", STARTUP_PROBE], env=node_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "constructed", proc.stdout
    assert lines[1].startswith("stopped after") and float(lines[1].split()[2]) < 1.0, lines
