"""Helpers behind the fixtures of test/conftest.py (tests use the fixtures)."""
