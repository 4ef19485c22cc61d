"""One of each small file helper: SHA-256 of a file, YAML loading, validation-error text.

Errors name the file and what was wrong with it; the caller chooses the exception type its
own callers expect (``ConfigError`` for parameter files, ``BundleError`` for bundles).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

__all__ = ["hash_file_into", "load_yaml", "sha256_file", "validation_error_lines"]


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    hash_file_into(h, path)
    return h.hexdigest()


def hash_file_into(h: Any, path: str | Path) -> None:
    """Feed a file's bytes to the hash object ``h`` in 1 MiB blocks (hashes over several
    files, e.g. a dataset)."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def load_yaml(path: str | Path, what: str, error: type[Exception]) -> Any:
    """``yaml.safe_load`` of a file; a missing file or bad YAML raises ``error`` naming
    ``what`` (e.g. "parameter file") and the path."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except yaml.YAMLError as err:
        raise error(f"{what} {path} is not valid YAML: {err}") from None


def validation_error_lines(err: ValidationError) -> list[str]:
    """One line per pydantic error: ``field.path: message (got value)``; a missing field
    says so instead of showing a value."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "missing":
            lines.append(f"{loc}: required field is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{loc}: {msg} (got {e.get('input', '<missing>')!r})")
    return lines
