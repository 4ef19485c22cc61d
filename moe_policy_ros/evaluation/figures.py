"""Tables and figures for docs/results.md from ``evaluate`` outputs (``eval.json``) and from a
router-vs-phase alignment (:mod:`.phases`).

* :func:`results_table`: one Markdown row per run (task, bundle, family, mode, routing,
  success with its Wilson interval, mean active experts, switches, latency, jitter, seeds).
* :func:`plot_success_vs_experts`: success rate (95% Wilson bars) against mean active experts,
  one point per run, labelled by routing (dense, top-k, mass tau, sticky), one colour per
  bundle and one marker per task: what adaptive activation costs or saves.
* :func:`plot_expert_phases`: one episode: the scripted phases as coloured bands, the dominant
  expert as a line and the active set as dots, with the NMI in the title.

matplotlib (Agg) is imported inside the plotting functions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moe_policy_ros.evaluation.metrics import wilson_interval
from moe_policy_ros.evaluation.phases import EpisodeRouting


def load_evals(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Read ``eval.json`` files (a directory means its ``eval.json``); errors name the file."""
    out = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / "eval.json"
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such evaluate output") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON ({err})") from None
        for key in ("task", "summary", "episodes", "routing"):
            if key not in doc:
                raise ValueError(f"{path}: missing key {key!r} (not an evaluate output?)")
        doc["_path"] = str(path)
        out.append(doc)
    return out


def routing_label(doc: dict[str, Any]) -> str:
    """Human name of a run's routing: the override if any, else the bundle's default."""
    r = doc.get("routing") or {}
    strategy = r.get("strategy") or doc.get("strategy") or "default"
    k = r.get("k") if r.get("k") is not None else doc.get("strategy_k")
    tau = r.get("tau") if r.get("tau") is not None else doc.get("strategy_tau")
    if strategy == "topk":
        text = f"top-{k}" if k is not None else "top-k"
    elif strategy == "mass":
        text = f"mass tau={tau}" if tau is not None else "mass"
    else:
        text = str(strategy)
    return text if r.get("strategy") else f"{text} (bundle default)"


def _bundle_name(doc: dict[str, Any]) -> str:
    b = doc.get("bundle") or doc.get("replay") or "?"
    return Path(str(b)).name


def _seeds(doc: dict[str, Any]) -> str:
    s = doc.get("seeds") or []
    if not s:
        return ""
    contiguous = list(s) == list(range(s[0], s[0] + len(s)))
    return f"{s[0]}..{s[-1]}" if contiguous and len(s) > 1 else ",".join(map(str, s))


def _f(v: Any, digits: int = 2) -> str:
    return "n/a" if v is None else f"{float(v):.{digits}f}"


def results_table(evals: Sequence[dict[str, Any]]) -> str:
    """Markdown table, one row per run, in the given order."""
    head = ("| task | bundle | family | mode | routing | success | 95% CI | mean active "
            "experts | switches / episode | inference p50 / p99 (ms) | jitter p99 (ms) | "
            "seeds |")
    lines = [head, "|" + "---|" * 12]
    for d in evals:
        s = d["summary"]
        lo, hi = s["ci95"]
        lines.append(
            f"| {d['task']} | {_bundle_name(d)} | {d.get('family') or '?'} | {d.get('mode')} "
            f"| {routing_label(d)} | {s['successes']}/{s['episodes']} "
            f"({100 * s['rate']:.0f}%) | {100 * lo:.0f}-{100 * hi:.0f}% | "
            f"{_f(s.get('mean_active_experts'))} | {_f(s.get('switches_per_episode'), 1)} | "
            f"{_f(s.get('latency_ms_p50'), 1)} / {_f(s.get('latency_ms_p99'), 1)} | "
            f"{_f(s.get('control_jitter_ms_p99'), 1)} | {_seeds(d)} |"
        )
    return "\n".join(lines) + "\n"


def plot_success_vs_experts(evals: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Success (with 95% Wilson bars) against mean active experts; see the module docstring.
    Runs without router statistics (a replay) are left out."""
    plt = _pyplot()
    runs = [d for d in evals if d["summary"].get("mean_active_experts") is not None]
    if not runs:
        raise ValueError("no run with router statistics (mean active experts) to plot")
    bundles = sorted({_bundle_name(d) for d in runs})
    tasks = sorted({d["task"] for d in runs})
    colours = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(bundles)}
    markers = {t: m for t, m in zip(tasks, "os^Dv", strict=False)}
    one_mode = len({d.get("mode") for d in runs}) == 1  # then the labels leave it out
    fig, ax = plt.subplots(figsize=(9, 5.5))
    points: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for d in runs:
        s, bundle = d["summary"], _bundle_name(d)
        colour = colours[bundle]
        k, n = int(s["successes"]), int(s["episodes"])
        lo, hi = wilson_interval(k, n)
        x, y = float(s["mean_active_experts"]), k / n if n else 0.0
        ax.errorbar(x, 100 * y, yerr=[[100 * (y - lo)], [100 * (hi - y)]], fmt=markers[d["task"]],
                    color=colour, capsize=3, ms=7)
        label = routing_label(d).replace(" (bundle default)", "*")
        ax.annotate(label if one_mode else f"{label} ({d.get('mode')})", (x, 100 * y),
                    textcoords="offset points", xytext=(6, 4), fontsize=7, color=colour)
        points.setdefault((bundle, d["task"]), []).append((x, 100 * y))
    for (b, _task), pts in points.items():  # a bundle's strategies joined in order of compute
        if len(pts) > 1:
            ax.plot(*zip(*sorted(pts), strict=True), "-", color=colours[b], alpha=0.3, lw=1)
    for b in bundles:
        ax.plot([], [], "o", color=colours[b], label=b)
    for t in tasks:
        ax.plot([], [], markers[t], color="grey", label=t)
    ax.set_xlabel("mean active experts per chunk")
    ax.set_ylabel("success (%), 95% Wilson interval")
    ax.set_ylim(-3, 103)
    ax.set_title("Success against compute (* = the bundle's default routing)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_expert_phases(
    episode: EpisodeRouting,
    expert_names: Sequence[str],
    phase_names: Sequence[str],
    path: str | Path,
    *,
    nmi: float | None = None,
    control_rate_hz: float = 50.0,
    title: str = "",
) -> Path:
    """Phases as bands, the dominant expert as a line and the active set as dots."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    phases = episode.phase_full or episode.phase
    steps_full = range(len(phases)) if episode.phase_full else episode.steps
    cmap = plt.get_cmap("tab20")
    start = 0
    seen: set[int] = set()
    pts = list(zip(steps_full, phases, strict=True))
    for i, (_s, p) in enumerate(pts):
        last = i == len(pts) - 1
        if last or pts[i + 1][1] != p:
            s0, s1 = pts[start][0], pts[i][0] + 1
            ax.axvspan(s0 / control_rate_hz, s1 / control_rate_hz, color=cmap(p % 20),
                       alpha=0.35, label=phase_names[p] if p not in seen else None, lw=0)
            seen.add(p)
            start = i + 1
    t = [s / control_rate_hz for s in episode.steps]
    for ti, act in zip(t, episode.active, strict=True):
        ax.scatter([ti] * len(act), act, s=10, c="tab:blue", alpha=0.5)
    ax.step(t, episode.dominant, where="post", color="black", lw=1.5, label="dominant expert")
    ax.set_yticks(range(len(expert_names)), list(expert_names), fontsize=8)
    ax.set_ylim(-0.5, len(expert_names) - 0.5)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("expert (dots: active set)")
    head = title or f"episode {episode.index} (seed {episode.seed})"
    if nmi is not None:
        head += f": NMI(dominant expert, phase) = {nmi:.2f}"
    ax.set_title(head)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close ``fig``; the path written."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
