"""Text of an evaluation run: the summary table ``evaluate`` prints before its final line."""

from __future__ import annotations

from typing import Any

from moe_policy_ros.rollout import Summary


def _fmt(v: float | None, unit: str = "", digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}{unit}"


def summary_table(summary: Summary, *, mode: str, wall_s: float,
                  causes: dict[str, int] | None = None) -> str:
    """A two-column table (metric | value) of a run, as Markdown."""
    lo, hi = summary.ci95
    rows: list[tuple[str, Any]] = [
        ("mode", mode),
        ("episodes", summary.episodes),
        ("success", f"{summary.successes}/{summary.episodes} ({100 * summary.rate:.0f}%)"),
        ("95% CI (Wilson)", f"{100 * lo:.0f}-{100 * hi:.0f}%"),
        ("mean active experts", _fmt(summary.mean_active_experts)),
        ("expert switches per episode", _fmt(summary.switches_per_episode)),
        (f"inference latency p50 / p99 ({summary.latency_source})",
         f"{_fmt(summary.latency_ms_p50)} / {_fmt(summary.latency_ms_p99, ' ms')}"),
        ("control jitter p99", _fmt(summary.control_jitter_ms_p99, " ms")
         if mode != "in-process" else "n/a (simulated time)"),
        ("episodes with an error", summary.errors),
        ("wall time", f"{wall_s:.0f} s"),
    ]
    for cause, n in sorted((causes or {}).items(), key=lambda kv: -kv[1]):
        rows.append((f"  error: {cause}", n))
    width = max(len(str(k)) for k, _ in rows)
    lines = [f"| {'metric'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {str(k).ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)


def error_causes(errors: list[str]) -> dict[str, int]:
    """Errors grouped by their kind (the text before the first ':' or ' at step')."""
    out: dict[str, int] = {}
    for e in errors:
        if not e:
            continue
        key = e.split(" at step")[0].split(":")[0].strip()
        out[key] = out.get(key, 0) + 1
    return out
