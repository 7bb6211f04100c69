"""Kill anywhere: interrupt a stage at a random moment, run it again, compare with an uninterrupted
run, many times per stage (the harness and what it checks: ``tests/kill_harness.py``; its fast
variant is ``tests/test_kill_anywhere.py``). Usage::

    python benchmarks/kill_anywhere.py --trials 10 --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(REPO / "tests"))
from _tables import machine_line, publish  # noqa: E402
from kill_harness import Trial, default_plans, make_inputs, make_references, run_stage_trials  # noqa: E402


def table(results: dict[str, list[Trial]]) -> list[str]:
    lines = ["| stage | trials | signals sent (SIGKILL / SIGINT) | signal reached a running stage | "
             "states seen after a signal | completed on rerun | identical to an uninterrupted run | problems |",
             "|---|---|---|---|---|---|---|---|"]
    for name, trials in results.items():
        kills = sum(t.signals.count("SIGKILL") for t in trials)
        ints = sum(t.signals.count("SIGINT") for t in trials)
        delivered = sum(t.delivered for t in trials)
        states = [s for t in trials for s in t.states]
        seen = ", ".join(f"{states.count(s)} {s}" for s in ("none", "complete", "problem") if states.count(s))
        problems = sum(len(t.problems) for t in trials)
        lines.append(f"| {name} | {len(trials)} | {kills} / {ints} | {delivered} | {seen} | "
                     f"{sum(t.completed for t in trials)} | {sum(t.identical for t in trials)} | {problems} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="trials per stage (at least one signal each)")
    parser.add_argument("--stages", default="split,train,infer,pseudolabel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write the table into")
    parser.add_argument("--no-jitter", dest="jitter", action="store_false",
                        help="signal at the drawn step itself, not a random fraction of a step later")
    args = parser.parse_args()
    names = [n for n in args.stages.split(",") if n]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kill-anywhere-") as tmp:
        base = Path(tmp)
        inputs = make_inputs(base)
        references = make_references(base, inputs, names)
        results: dict[str, list[Trial]] = {}
        for name in names:
            results[name] = run_stage_trials(base, inputs, references[name], name, default_plans(args.trials),
                                             args.seed, jitter=args.jitter)
            for trial in results[name]:
                for problem in trial.problems:
                    print(f"{name}: {problem}", file=sys.stderr)
            print("\n".join(table({name: results[name]})[2:]), file=sys.stderr)
    minutes = (time.perf_counter() - began) / 60
    lines = [
        "## Kill anywhere",
        "",
        f"Command: `python benchmarks/kill_anywhere.py --trials {args.trials}"
        + (f" --stages {args.stages}" if args.stages != "split,train,infer,pseudolabel" else "")
        + (f" --seed {args.seed}" if args.seed else "") + ("" if args.jitter else " --no-jitter") + "`  ",
        f"Machine: {machine_line()}; {minutes:.1f} minutes in all.",
        "",
        "Each trial starts the stage's command line, has it wait (test hook `SIMFORMER_TEST_HOLD`) at a "
        "step of its writing phase drawn at random, lets it go on and sends SIGKILL (or, every fifth "
        "trial, SIGINT to its process group) a random fraction of a step later (the stage waits at the "
        "next step, or before it exits, if it gets there first: every signal reaches a running stage; "
        "every fourth trial kills the rerun once more), checks with the "
        "artifact readers that the output is absent or complete, then runs the same command again "
        "(train with `--resume` when a checkpoint exists) and compares every array, the weights and the "
        "loss log with the uninterrupted run. Split: folder dataset of 48 + 24 images, 2 workers; "
        "train: tiny preset, 6 steps of 4 images, a checkpoint every step; infer (24 val images) and "
        "pseudolabel (48 train images): one image per shard.",
        "",
        *table(results),
    ]
    publish(lines, args.out, "kill_anywhere")
    if any(t.problems for trials in results.values() for t in trials):
        sys.exit(1)


if __name__ == "__main__":
    main()
