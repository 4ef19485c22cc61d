"""Helpers behind the fixtures of test/conftest.py (tests use the fixtures).

A test module imports from here only what it needs at import time: the constants below, a
class it subclasses, names for its annotations.
"""

from __future__ import annotations

from pathlib import Path

#: The repository root (the checkout these tests run from).
REPO = Path(__file__).resolve().parents[2]
