"""The loss-curve figure of a run (``loss.png``) from its ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics: Path, out: Path) -> Path:
    """Training loss terms and validation loss (log scale) and rollout success per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train: dict[str, list[tuple[int, float]]] = {}
    val: list[tuple[int, float]] = []
    roll: list[tuple[int, float]] = []
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        kind, step = rec.get("kind"), rec.get("step", 0)
        if kind == "train":
            for k, v in rec.items():
                if k in ("kind", "step", "phase", "lr", "steps_per_s", "wall_time_s",
                         "grad_norm"):
                    continue
                if isinstance(v, (int, float)):
                    train.setdefault(k, []).append((step, float(v)))
        elif kind == "val":
            val.append((step, float(rec["loss"])))
        elif kind == "rollout" and rec.get("episodes"):
            roll.append((step, rec["successes"] / rec["episodes"]))
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    for k, pts in sorted(train.items()):
        xs, ys = zip(*pts, strict=True)
        if min(ys) > 0:
            ax.plot(xs, ys, lw=1.6 if k == "loss" else 0.8, label=f"train {k}")
    if val:
        xs, ys = zip(*val, strict=True)
        ax.plot(xs, ys, "k.-", lw=1.6, label="validation loss")
    ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    if roll:
        xs, ys = zip(*roll, strict=True)
        ax2.plot(xs, [100 * y for y in ys], "o-", color="tab:green")
    ax2.set_ylim(-5, 105)
    ax2.set_ylabel("rollout success %")
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
