"""`moe-policy-ros results`: the tables and figures of docs/results.md from evaluate outputs.

``--eval`` takes ``eval.json`` files (or their directories) and writes ``results_table.md``
(one row per run) and ``success_vs_experts.png``; ``--phases-bundle B --phases-data D`` routes
the demonstrations of dataset D through bundle B (:mod:`moe_policy_ros.evaluation.phases`),
writes ``expert_phases.png`` (one episode under its scripted phases), ``phases.json`` (the
contingency table, the NMI, the labels the exporter would give) and prints the NMI.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval", nargs="*", default=[], metavar="EVAL_JSON",
                        help="evaluate outputs (eval.json or the directory holding it)")
    parser.add_argument("--phases-bundle", type=Path, default=None,
                        help="bundle whose router is compared with the phases")
    parser.add_argument("--phases-data", type=Path, default=None,
                        help="dataset with per-step phase labels (moe-policy-ros record)")
    parser.add_argument("--phases-episodes", type=int, default=10,
                        help="dataset episodes routed for the NMI (0 = all)")
    parser.add_argument("--phases-episode", type=int, default=0,
                        help="which routed episode the figure shows")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))


def run(args: argparse.Namespace) -> int:
    from moe_policy_ros.evaluation import figures

    if not args.eval and args.phases_bundle is None:
        print("results: nothing to do (give --eval and/or --phases-bundle)", file=sys.stderr)
        return 2
    if (args.phases_bundle is None) != (args.phases_data is None):
        print("results: --phases-bundle and --phases-data go together", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        if args.eval:
            evals = figures.load_evals(args.eval)
            table = figures.results_table(evals)
            (args.out / "results_table.md").write_text(table)
            print(table)
            try:
                png = figures.plot_success_vs_experts(evals, args.out / "success_vs_experts.png")
                print(f"wrote {png}")
            except ValueError as err:
                print(f"results: no success-vs-experts plot: {err}")
            print(f"wrote {args.out / 'results_table.md'}")
        if args.phases_bundle is not None:
            from moe_policy_ros.evaluation.phases import router_on_dataset

            n = args.phases_episodes
            from moe_policy_ros.data.episodes import Dataset

            total = len(Dataset.open(args.phases_data))
            episodes = list(range(min(n, total))) if n > 0 else None
            align = router_on_dataset(args.phases_bundle, args.phases_data, episodes=episodes)
            if not 0 <= args.phases_episode < len(align.episodes):
                raise ValueError(f"--phases-episode {args.phases_episode}: only "
                                 f"{len(align.episodes)} episodes were routed")
            ep = align.episodes[args.phases_episode]
            png = figures.plot_expert_phases(
                ep, align.expert_names, align.phase_names, args.out / "expert_phases.png",
                nmi=align.nmi,
                title=f"{args.phases_bundle.name} on {args.phases_data.name} episode "
                f"{ep.index} (seed {ep.seed})",
            )
            (args.out / "phases.json").write_text(json.dumps(align.to_dict(), indent=1) + "\n")
            labels, reason = align.expert_labels()
            print(f"NMI(dominant expert, phase) over {len(align.episodes)} episodes: "
                  f"{align.nmi:.3f}")
            print(f"labels from phases: {reason}: {', '.join(labels)}")
            print(f"wrote {png} and {args.out / 'phases.json'}")
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"results: {err}", file=sys.stderr)
        return 2
    return 0
