"""The quality benchmark: the method's parts, an oracle and a CAM baseline, side by side, under a
protocol that keeps the figures honest.

Two protocols, never mixed:

    tuning   split seeds 0 1, one training seed, scored on the tuning images (synthetic: val;
             CamVid: training images held out with ``split --holdout``). Settings are chosen here.
    report   split seeds 2 3 4, training seeds 0 1 2, scored on held-out images nothing was chosen
             on (synthetic: the generator's test subset; CamVid: its val images). Run once, after
             the settings are fixed.

Rows, each trained with the same budget (``--iters``, default the tiny preset's 1000 steps)::

    oracle                every class pixel-labelled (train --method oracle), same budget
    oracle-conv           the same, trained to convergence (--oracle-iters, chosen from --curve)
    wsmf                  weak-shot MaskFormer: proposal-pixel transfer only
    comp                  + complementary loss
    simformer             SimFormer one-stage: + pixel-pixel similarity distillation
    finetune              SimFormer + retraining (pseudolabel, retrain --init-from the one-stage model)
    cam                   CAM baseline (train --method cam, pseudolabel, retrain)

and, not by default::

    wsmf-dfr              weak-shot MaskFormer with the DFR regularizer instead of distillation
    simformer-dfr         SimFormer one-stage + the DFR regularizer
    simformer-part        SimFormer one-stage + the novel partition (loss.partition)
    finetune-part         that model + retraining

and variants ``ROW+KEY=VALUE[+KEY=VALUE...]`` of every row but the oracles and CAM, trained with
those ``--set`` settings under their own names; a retrained row's variant trains its one-stage
model with them and takes ``pseudolabel.among=RULE`` as its pseudo-label rule (default ``image``),
``pseudolabel.rounds=N`` and the pseudolabel options ``pseudolabel.groups=K``,
``pseudolabel.appears=A`` and ``pseudolabel.unnamed=ignore``, e.g.
``finetune+loss.elimination=true+pseudolabel.among=quantile``. Retrained rows that start from
one model share its training.

Every row is reported as mean ± standard deviation over all its runs (split seeds x training
seeds); a difference between two rows is called an effect only when the 95% confidence interval
of their paired differences (same split, same training seed) excludes zero.

``--curve 500 1000 2000 4000`` instead trains the oracle at each budget (a full poly schedule
each) on the tuning splits and writes its learning curve: the budget where it stops improving
is the converged oracle's ``--oracle-iters``.

Rows run as CLI commands, ``--parallel`` chains at a time, each with its share of the cores as
torch threads. Artifacts stay in ``--workdir`` (default ``runs/bench/quality-SETTING-PROTOCOL``; the curve shares
the tuning workdir, and both oracle rows and the curve share one model per budget and seed) and
every stage skips what is already there, so an interrupted table continues where it stopped.

    python benchmarks/quality.py --protocol tuning --out BENCHMARKS.md
    python benchmarks/quality.py --protocol report --out BENCHMARKS.md
    python benchmarks/quality.py --curve 500 1000 2000 4000 --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _tables import machine_line, publish  # noqa: E402

from simformer_cli.artifacts.store import partial_dir  # noqa: E402
from simformer_cli.training.checkpoint import latest_checkpoint  # noqa: E402
from simformer_cli.training.loop import CHECKPOINTS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROWS = {
    "oracle": "oracle (full labels), same budget",
    "oracle-conv": "oracle (full labels), converged",
    "wsmf": "weak-shot MaskFormer",
    "comp": "+ complementary loss",
    "simformer": "SimFormer one-stage",
    "finetune": "SimFormer + retraining",
    "cam": "CAM baseline (+ retraining)",
    "wsmf-dfr": "weak-shot MaskFormer + DFR regularizer",
    "simformer-dfr": "SimFormer one-stage + DFR regularizer",
    "simformer-part": "SimFormer one-stage + novel partition",
    "finetune-part": "SimFormer + novel partition + retraining",
}
DEFAULT_ROWS = ["oracle", "oracle-conv", "wsmf", "comp", "simformer", "finetune", "cam"]
NO_SIMILARITY = ["--set", "loss.similarity=false", "--set", "loss.distillation=false"]
TRAIN_FLAGS = {
    "oracle": ["--method", "oracle"],
    "oracle-conv": ["--method", "oracle"],
    "wsmf": ["--set", "loss.complementary=false", *NO_SIMILARITY],
    "comp": NO_SIMILARITY,
    "simformer": [],
    "cam": ["--method", "cam"],
    "wsmf-dfr": ["--set", "loss.complementary=false", *NO_SIMILARITY, "--regularizer", "dfr"],
    "simformer-dfr": ["--regularizer", "dfr"],
    "simformer-part": ["--set", "loss.partition=true"],
}
#: Rows that score a model retrained on the pseudo labels of another row's model, initialised from it.
FINETUNED = {"finetune": "simformer", "finetune-part": "simformer-part"}
#: A variant of a trained row: ``ROW+KEY=VALUE[+KEY=VALUE...]``, the row with those settings. A
#: retrained row's variant trains its one-stage model with them, except ``pseudolabel.among=RULE``,
#: the pseudo-label rule (default ``image``), and ``pseudolabel.rounds=N``: N rounds of pseudo
#: labels and retraining, each round's from the model the round before retrained (default 1), and
#: ``PSEUDO_LABEL_OPTIONS``.
VARIED = [row for row in TRAIN_FLAGS if not row.startswith("oracle") and row != "cam"] + list(FINETUNED)
AMONG = "pseudolabel.among"
ROUNDS = "pseudolabel.rounds"
#: ``pseudolabel.KEY=VALUE`` settings passed to every round's pseudolabel as ``--KEY VALUE``.
PSEUDO_LABEL_OPTIONS = ("pseudolabel.groups", "pseudolabel.appears", "pseudolabel.unnamed")
PSEUDO_LABEL_SETTINGS = (AMONG, ROUNDS, *PSEUDO_LABEL_OPTIONS)


def base_row(row: str) -> str:
    return row.partition("+")[0]


def row_settings(row: str) -> list[str]:
    return [item for item in row.split("+")[1:] if item]


def training_settings(row: str) -> list[str]:
    return [item for item in row_settings(row) if item.partition("=")[0] not in PSEUDO_LABEL_SETTINGS]


def source_of(row: str) -> str:
    """The row whose model a row scores or starts from: a retrained row's one-stage row (with the
    variant's training settings), every other row itself."""
    if base_row(row) not in FINETUNED:
        return row
    return "+".join([FINETUNED[base_row(row)], *training_settings(row)])


def pseudo_label_setting(row: str, key: str, default: str) -> str:
    values = [item.partition("=")[2] for item in row_settings(row) if item.partition("=")[0] == key]
    return values[-1] if values else default


def among_of(row: str) -> str:
    return pseudo_label_setting(row, AMONG, "image")


def pseudo_label_options(row: str) -> list[str]:
    """The row's pseudolabel options beside ``--among`` (``PSEUDO_LABEL_OPTIONS``)."""
    return [part for item in row_settings(row) if item.partition("=")[0] in PSEUDO_LABEL_OPTIONS
            for part in ("--" + item.partition("=")[0].partition(".")[2], item.partition("=")[2])]


def rounds_of(row: str) -> int:
    return int(pseudo_label_setting(row, ROUNDS, "1"))


def first_round(row: str) -> str:
    """A retrained row without its rounds setting: the row whose artifacts are its first round."""
    return "+".join([base_row(row), *(item for item in row_settings(row) if item.partition("=")[0] != ROUNDS)])


def row_label(row: str) -> str:
    settings = row_settings(row)
    return ROWS[base_row(row)] + (f" ({', '.join(settings)})" if settings else "")


def row_tag(row: str) -> str:
    """A row's artifact names: its variant's settings spelled safely for a file name."""
    return row.replace("+", "_").replace("=", "-").replace("/", "-")


def row_argument(text: str) -> str:
    """--rows: a row name, or a variant of a trained row."""
    base, settings = base_row(text), row_settings(text)
    if base not in ROWS:
        raise argparse.ArgumentTypeError(f"unknown row {base!r}; choose from {', '.join(ROWS)}")
    if "+" in text and (base not in VARIED or not settings or any("=" not in item for item in settings)):
        raise argparse.ArgumentTypeError(f"{text!r}: a variant is ROW+KEY=VALUE[+KEY=VALUE...] of one of "
                                         f"{', '.join(VARIED)}")
    if base not in FINETUNED and len(training_settings(text)) != len(settings):
        raise argparse.ArgumentTypeError(f"{text!r}: {' and '.join(PSEUDO_LABEL_SETTINGS)} are settings of the "
                                         f"retrained rows ({', '.join(FINETUNED)})")
    rounds = pseudo_label_setting(text, ROUNDS, "1")
    if not rounds.isdigit() or int(rounds) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: {ROUNDS} is a whole number of rounds, at least 1")
    return text


def ordered(rows: list[str]) -> list[str]:
    """The table's order: ROWS' order, each variant after its row."""
    return sorted(dict.fromkeys(rows), key=lambda row: (list(ROWS).index(base_row(row)), "+" in row, row))


def comparisons_of(rows: list[str]) -> list[tuple[str, str]]:
    """The paired comparisons of these rows: COMPARISONS, and each variant against its row and
    against what its row is compared with."""
    pairs = [(a, b) for a, b in COMPARISONS if a in rows and b in rows]
    for variant in (row for row in rows if "+" in row):
        base = base_row(variant)
        pairs += [(variant, other) for other in [base] + [b for a, b in COMPARISONS if a == base] if other in rows]
    return pairs
#: Training steps between checkpoints: a benchmark stopped mid-training continues from the last
#: one when it is run again (the weights are those of an uninterrupted run).
CHECKPOINT_EVERY = 200
#: Pixels either side of a label edge that the boundary column scores (eval --boundary-band).
BOUNDARY_BAND = 3
#: Pairs whose paired difference the table reports: each is a claim the README or a note makes.
COMPARISONS = [("comp", "wsmf"), ("simformer", "comp"), ("finetune", "simformer"), ("simformer", "cam"),
               ("finetune", "cam"),
               ("wsmf-dfr", "wsmf"), ("simformer-dfr", "simformer"),
               ("simformer-part", "simformer"), ("finetune-part", "finetune")]


@dataclass(frozen=True)
class Protocol:
    split_seeds: tuple[int, ...]
    train_seeds: tuple[int, ...]
    kind: str  # "tuning" or "report"


PROTOCOLS = {
    "tuning": Protocol((0, 1), (0,), "tuning"),
    "report": Protocol((2, 3, 4), (0, 1, 2), "report"),
}


@dataclass(frozen=True)
class Setting:
    """Where the data comes from and which subset each protocol scores on."""

    description: str
    split_args: Callable[[int], list[str]]  # split seed -> the split command's data options
    subsets: dict[str, str]  # protocol kind -> subset scored
    seeded: bool = True  # False: the novel classes are fixed, so split seeds do not change the split
    # False: the split seed only chooses which classes are novel, so a fully supervised (oracle)
    # training is the same on every split: it is trained once and scored under each split's classes.
    oracle_per_split: bool = True


SYNTHETIC = "synthetic data (1500 train / 300 val / 300 test images of 128x128, 16 classes)"
#: Co-occurrence: three novel classes (``--ratio 13:3 --seed S``), each in this share of the images.
PRESENCE = {"uniform": (0.92, 0.92, 0.92), "skewed": (0.98, 0.87, 0.87)}


def co_occurring(shares: tuple[float, ...]) -> Callable[[int], list[str]]:
    def split_args(seed: int) -> list[str]:
        from simformer_cli.data.class_split import draw_novel_classes

        novel = draw_novel_classes(16, (13, 3), seed, always_base=(0,))
        presence = ",".join(f"{c}={share}" for c, share in zip(novel, shares))
        return ["--dataset", "synthetic", "--ratio", "13:3", "--seed", str(seed), "--synthetic-presence", presence]

    return split_args


def camvid(root: Path, novel: str) -> Setting:
    return Setting(
        f"CamVid street scenes ({root}: 367 train images, 60 of them held out for tuning with `--holdout 60`, "
        f"101 val images, 180x240; novel classes {novel.replace(',', ', ')})",
        lambda seed: ["--dataset", "folder", "--root", str(root), "--novel-classes", novel, "--holdout", "60"],
        {"tuning": "holdout", "report": "val"}, seeded=False)


def settings(camvid_root: Path) -> dict[str, Setting]:
    return {
        "independent": Setting(
            f"{SYNTHETIC}, `split --ratio 3:1 --seed S` (4 novel classes, each in about a quarter of the images)",
            lambda seed: ["--dataset", "synthetic", "--ratio", "3:1", "--seed", str(seed)],
            {"tuning": "val", "report": "test"}, oracle_per_split=False),
        **{name: Setting(
            f"{SYNTHETIC}, `split --ratio 13:3 --seed S` (3 novel classes) with the novel classes in "
            f"{', '.join(f'{round(100 * s)}%' for s in shares)} of the images (`--synthetic-presence`)",
            co_occurring(shares), {"tuning": "val", "report": "test"}) for name, shares in PRESENCE.items()},
        "camvid": camvid(camvid_root, "tree,car,pedestrian"),
        "camvid-b": camvid(camvid_root, "building,fence,bicyclist"),
    }


@dataclass
class Chain:
    """Commands run one after another; ``scores`` maps a row to its metrics file."""

    name: str
    commands: list[list[str]]
    trainings: int
    scores: dict[str, Path] = field(default_factory=dict)
    #: row -> (metrics artifact of the same model on the first split, this split): scores derived
    #: from that confusion matrix under this split's classes, for an oracle trained once.
    derived: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    extras: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


def simformer(*args: object) -> list[str]:
    return [sys.executable, "-m", "simformer_cli", *map(str, args)]


def score(model: Path, split: Path, subset: str, tag: str, folder: Path) -> tuple[list[list[str]], Path]:
    predictions, metrics = folder / f"{tag}-pred-{subset}.zarr", folder / f"{tag}-metrics-{subset}.json"
    return [
        simformer("infer", "--model", model, "--split", split, "--subset", subset, "--out", predictions,
                  "--device", "cpu"),
        simformer("eval", "--predictions", predictions, "--split", split, "--out",
                  folder / f"{tag}-metrics-{subset}.zarr", "--boundary-band", BOUNDARY_BAND, "--no-chart", "--json",
                  ">", metrics),
    ], metrics


def chains_for(unit: str, split: Path, folder: Path, rows: list[str], subset: str, *, seed: int, iters: int,
               oracle_iters: int, retrain_iters: int, overrides: list[str],
               oracle_from: Path | None = None) -> list[Chain]:
    """The chains of one unit (a split and a training seed): one per row, retraining rows inside
    the chain of the model they start from. ``oracle_from``: the folder of the split whose oracle
    models this split shares (same training data), scored again under this split's classes."""
    common = ["--split", split, "--seed", seed, "--device", "cpu", "--checkpoint-every", CHECKPOINT_EVERY,
              *[part for item in overrides for part in ("--set", item)]]
    chains = []
    for row in rows:
        source = source_of(row)
        if source != row and (source in rows or any(source_of(other) == source for other in rows[:rows.index(row)])):
            continue  # made by the chain that trains the one-stage model
        steps = oracle_iters if row == "oracle-conv" else iters
        home = folder
        if row.startswith("oracle"):
            # One home per (budget, seed), shared by both oracle rows and the curve: the same
            # training is never run twice in one workdir.
            home = split.parent / (f"oracle-{steps}" + (f"-seed{seed}" if seed else ""))
            if oracle_from is not None:
                shared = oracle_from / home.name / f"oracle-metrics-{subset}.zarr"
                chains.append(Chain(f"{row}/{unit}", [], 0, derived={row: (shared, split)}))
                continue
            home.mkdir(parents=True, exist_ok=True)
        tag = "oracle" if row.startswith("oracle") else row_tag(source)
        model = home / f"{tag}.zarr"
        variant = [part for item in row_settings(source) for part in ("--set", item)]
        chain = Chain(f"{row}/{unit}", [simformer("train", "--out", model, *TRAIN_FLAGS[base_row(source)], *common,
                                                  *variant, "--iters", steps)], 1)
        if row != "cam" and base_row(row) not in FINETUNED:  # those rows score the retrained model only
            commands, chain.scores[row] = score(model, split, subset, tag, home)
            chain.commands += commands
        targets = ["cam"] if row == "cam" else [other for other in rows
                                                if base_row(other) in FINETUNED and source_of(other) == source]
        for target in targets:
            # Round 1's artifacts are those of the row without its rounds setting (shared with it
            # when both are asked for); round r's pseudo labels come from round r-1's model.
            first = first_round(target)
            starting = model
            for round_ in range(1, rounds_of(target) + 1):
                name = row_tag(first) + (f"-round{round_}" if round_ > 1 else "")
                labels, retrained = home / f"{name}-pseudolabels.zarr", home / f"{name}-retrained.zarr"
                chain.extras[target] = home / f"{name}-pseudolabels.json"
                init = [] if target == "cam" else ["--init-from", starting]
                round_commands = [
                    simformer("pseudolabel", "--model", starting, "--split", split, "--out", labels,
                              "--among", among_of(target), *pseudo_label_options(target), "--device", "cpu", "--json",
                              ">", chain.extras[target]),
                    simformer("retrain", "--split", split, "--pseudolabels", labels, "--out", retrained,
                              *init, *common, "--iters", retrain_iters)]
                if round_commands[0] not in chain.commands:
                    chain.commands += round_commands
                    chain.trainings += 1
                starting = retrained
            commands, chain.scores[target] = score(starting, split, subset, row_tag(target), home)
            chain.commands += [command for command in commands if command not in chain.commands]
        chains.append(chain)
    return chains


def training_outputs(chains: list[Chain]) -> list[Path]:
    """The model artifacts the chains' train and retrain commands write."""
    return [Path(c[c.index("--out") + 1]) for chain in chains for c in chain.commands if c[3] in ("train", "retrain")]


def interrupted(command: list[str]) -> bool:
    """Whether a train or retrain command's output is missing and an interrupted run of it left a
    checkpoint: the command then continues it (``--resume``) instead of starting over."""
    if command[3] not in ("train", "retrain"):
        return False
    out = Path(command[command.index("--out") + 1])
    return not out.exists() and latest_checkpoint(partial_dir(out) / CHECKPOINTS) is not None


def run_command(command: list[str], env: dict[str, str], log: Path) -> None:
    """Run one command (a trailing ``> FILE`` sends stdout there, written only when it succeeds);
    stop the benchmark on failure. A training that an earlier run of the benchmark left
    interrupted continues from its last checkpoint; where that checkpoint cannot be resumed
    (made with other settings), the training starts over."""
    stdout_path = None
    if len(command) > 2 and command[-2] == ">":
        command, stdout_path = command[:-2], Path(command[-1])
    attempts = [command + ["--resume"], command] if interrupted(command) else [command]
    for attempt in attempts:
        with open(log, "a") as err:
            err.write("$ " + " ".join(attempt) + "\n")
            err.flush()
            done = subprocess.run(attempt, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        if done.returncode == 0:
            break
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}; see {log}")
    if stdout_path is not None:
        stdout_path.write_text(done.stdout)


def run_chains(chains: list[Chain], parallel: int, threads: int, log: Path) -> None:
    """Longest chains first, ``parallel`` at a time."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    queue = sorted(chains, key=lambda c: -c.trainings)
    lock = threading.Lock()
    failures: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if not queue or failures:
                    return
                chain = queue.pop(0)
            began = time.perf_counter()
            try:
                for command in chain.commands:
                    run_command(command, env, log)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(exc)
                return
            chain.seconds = time.perf_counter() - began
            print(f"  {chain.name}: {chain.seconds:.0f} s", file=sys.stderr, flush=True)

    workers = [threading.Thread(target=worker) for _ in range(parallel)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    if failures:
        raise failures[0]


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def paired(a: dict[tuple, float], b: dict[tuple, float]) -> str:
    """Mean paired difference a - b over the units both have, with a 95% t interval; "effect" when
    the interval excludes zero."""
    from scipy import stats

    units = sorted(set(a) & set(b))
    differences = [a[u] - b[u] for u in units]
    if len(differences) < 2:
        return "n/a (fewer than two paired runs)"
    mean, sd = statistics.fmean(differences), statistics.stdev(differences)
    half = stats.t.ppf(0.975, len(differences) - 1) * sd / math.sqrt(len(differences))
    verdict = "effect" if abs(mean) > half else "no effect beyond noise"
    return f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}] over {len(differences)} pairs: {verdict}"


def table(runs: dict[str, dict[tuple, dict]], rows: list[str], split_seeds: list[int]) -> list[str]:
    """Mean ± sd over all runs; "% of" columns are ratios of the means' novel mIoU."""
    references = [row for row in ("oracle-conv", "oracle") if runs.get(row)]
    lines = ["| model | runs | mIoU | base | novel | hIoU | novel found | novel renamed | "
             f"boundary mIoU ({BOUNDARY_BAND} px) | "
             + "".join(f"novel % of {r} | " for r in references)
             + "novel, mean per split (" + " / ".join(f"split {s}" for s in split_seeds) + ") |",
             "|---|---|---|---|---|---|---|---|---|" + "---|" * len(references) + "---|"]
    for row in rows:
        results = runs.get(row)
        if not results:
            continue
        values = list(results.values())
        cells = [str(len(values))] + [spread([r[key] for r in values]) for key in ("miou", "base_miou", "novel_miou", "hiou")]
        cells += [spread([r["novel"][key] for r in values]) for key in ("union_iou", "renamed_miou")]
        banded = [r["boundary"]["miou"] for r in values if r.get("boundary")]  # rescored oracles have none
        cells.append(spread(banded) if banded else "-")
        mean = statistics.fmean(r["novel_miou"] for r in values)
        for reference in references:
            bound = statistics.fmean(r["novel_miou"] for r in runs[reference].values())
            cells.append(f"{100 * mean / max(bound, 1e-9):.0f}%")
        per_split = []
        for seed in split_seeds:
            mine = [r["novel_miou"] for (split_seed, _), r in results.items() if split_seed == seed]
            per_split.append(f"{statistics.fmean(mine):.1f}" if mine else "-")
        cells.append(" / ".join(per_split))
        lines.append(f"| {row_label(row)} | " + " | ".join(cells) + " |")
    return lines


def check_subset(split: Path, subset: str) -> None:
    """Stop before any training when the images to score on are not a subset of the split."""
    have = json.loads((split / "manifest.json").read_text())["manifest"]["summary"]["subsets"]
    if subset not in have:
        raise SystemExit(f"error: {split} has no '{subset}' images to score on (it has {', '.join(sorted(have))}); "
                         "give --score-on one of those")


def run_units(args: argparse.Namespace, setting: Setting, subset: str, split_seeds: list[int], train_seeds: list[int],
              rows: list[str], work: Path, log: Path, *, oracle_iters: int,
              iters_of: list[int] | None = None) -> list[Chain]:
    """Make the splits, then build and run every chain of these units (``iters_of``: one unit per
    budget, for the learning curve)."""
    chains: list[Chain] = []
    for split_seed in split_seeds:
        split = work / f"split{split_seed}" / "split.zarr"
        first = work / f"split{split_seeds[0]}"
        oracle_from = None if setting.oracle_per_split or split_seed == split_seeds[0] else first
        run_command(simformer("split", *setting.split_args(split_seed), "--out", split), dict(os.environ), log)
        check_subset(split, subset)
        for train_seed in train_seeds:
            for iters in (iters_of or [args.iters]):
                folder = split.parent / (f"train{train_seed}" if iters_of is None else f"oracle-{iters}")
                folder.mkdir(parents=True, exist_ok=True)
                unit = f"split {split_seed}, seed {train_seed}" + ("" if iters_of is None else f", {iters} steps")
                chains += chains_for(unit, split, folder, rows, subset, seed=train_seed, iters=iters,
                                     oracle_iters=oracle_iters, retrain_iters=args.retrain_iters or iters,
                                     overrides=args.overrides, oracle_from=oracle_from)
    cores = len(os.sched_getaffinity(0))
    threads = args.threads or max(1, cores // args.parallel)
    print(f"{len(chains)} chains, {args.parallel} at a time, {threads} torch thread(s) each; log {log}",
          file=sys.stderr)
    run_chains(chains, args.parallel, threads, log)
    return chains


def collect(chains: list[Chain]) -> tuple[dict[str, dict[tuple, dict]], dict[str, list[float]]]:
    runs: dict[str, dict[tuple, dict]] = {}
    pseudo: dict[str, list[float]] = {}
    for chain in chains:
        split_seed, train_seed = unit_of(chain)
        for row, path in chain.scores.items():
            runs.setdefault(row, {})[(split_seed, train_seed)] = json.loads(path.read_text())
        for row, (metrics, split) in chain.derived.items():
            runs.setdefault(row, {})[(split_seed, train_seed)] = rescored(metrics, split)
        for row, path in chain.extras.items():
            summary = json.loads(path.read_text())["summary"]
            if summary.get("novel_miou_vs_audit") is not None:
                pseudo.setdefault(row, []).append(summary["novel_miou_vs_audit"])
    return runs, pseudo


def rescored(metrics: Path, split: Path) -> dict:
    """The report of a metrics artifact's confusion matrix under ``split``'s base and novel classes
    (same images and class list, another choice of novel classes)."""
    import zarr

    from simformer_cli.evaluation import compute_report

    first = json.loads(metrics.with_suffix(".json").read_text())
    classes = json.loads((split / "manifest.json").read_text())["manifest"]
    report = compute_report(zarr.open_array(str(metrics / "confusion"), mode="r")[...], classes["class_names"],
                            classes["base_classes"], classes["novel_classes"], num_images=first["num_images"],
                            ignored_pixels=first["ignored_pixels"])
    return report.model_dump(mode="json")


def unit_of(chain: Chain) -> tuple[int, int]:
    """(split seed, training seed) from a chain's name ``row/split S, seed T[, N steps]``."""
    _, _, unit = chain.name.partition("/")
    parts = [part.strip() for part in unit.split(",")]
    return int(parts[0].split()[1]), int(parts[1].split()[1])


def command_line(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The command that makes the table; ``--workdir`` only when given (the artifacts' names do not
    say every setting, e.g. ``--retrain-iters``, so such runs keep a workdir of their own)."""
    shown = []
    for name, value in vars(args).items():
        if name == "out" or value is None or value == parser.get_default(name):
            continue
        flag = "--" + name.replace("_", "-")
        if name == "overrides":
            shown += [f"--set {item}" for item in value]
        elif isinstance(value, list):
            shown.append(f"{flag} {' '.join(map(str, value))}")
        else:
            shown.append(f"{flag} {shlex.quote(str(value))}")
    return "python benchmarks/quality.py" + "".join(f" {part}" for part in shown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=["independent", "uniform", "skewed", "camvid", "camvid-b"],
                        default="independent")
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="tuning")
    parser.add_argument("--split-seeds", type=int, nargs="+", default=None, help="instead of the protocol's")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=None, help="instead of the protocol's")
    parser.add_argument("--rows", nargs="+", type=row_argument, default=DEFAULT_ROWS, metavar="ROW",
                        help=f"rows: {', '.join(ROWS)}; or ROW+KEY=VALUE[+KEY=VALUE...], a variant of one of "
                             f"{', '.join(VARIED)} (e.g. simformer-dfr+loss.dfr_weight=5)")
    parser.add_argument("--iters", type=int, default=1000, help="training steps of every row (the tiny preset's)")
    parser.add_argument("--retrain-iters", type=int, default=None, help="steps of the retraining rows (default --iters)")
    parser.add_argument("--oracle-iters", type=int, default=4000, help="steps of the converged oracle (from --curve)")
    parser.add_argument("--oracle-seeds", type=int, nargs="+", default=[0],
                        help="training seeds of the converged oracle (the most expensive row)")
    parser.add_argument("--curve", type=int, nargs="+", default=None,
                        help="instead of the table: the oracle's learning curve at these budgets (tuning splits)")
    parser.add_argument("--score-on", default=None, metavar="SUBSET",
                        help="score the tuning runs on this subset of their splits instead (e.g. CamVid's val), "
                             "a check of how tuning figures carry over")
    parser.add_argument("--parallel", type=int, default=2, help="chains run at once")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per chain (default: the cores shared among --parallel chains); give "
                             "fewer when something else runs beside the benchmark")
    parser.add_argument("--camvid-root", type=Path, default=REPO.parent / "shared" / "data" / "camvid")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for every training")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the table into this BENCHMARKS.md")
    parser.add_argument("--section", default=None,
                        help="the BENCHMARKS.md section to write (default quality-SETTING-PROTOCOL, or -curve)")
    parser.add_argument("--title", default=None, help="added to the section's heading, e.g. what its rows compare")
    args = parser.parse_args()
    setting = settings(args.camvid_root)[args.setting]
    if args.setting.startswith("camvid") and not (args.camvid_root / "classes.json").is_file():
        print(f"skipped: no CamVid folder at {args.camvid_root} (pass --camvid-root)", file=sys.stderr)
        return
    protocol = PROTOCOLS["tuning" if args.curve else args.protocol]
    if args.score_on and protocol.kind != "tuning":
        parser.error("--score-on scores the tuning runs elsewhere; the report protocol has its own images")
    one_split = not setting.seeded or (args.curve and not setting.oracle_per_split)  # more would repeat one training
    split_seeds = args.split_seeds or list(protocol.split_seeds[:1] if one_split else protocol.split_seeds)
    train_seeds = args.train_seeds or list(protocol.train_seeds)
    name = f"{args.setting}-{'curve' if args.curve else protocol.kind}"
    if args.oracle_iters == args.iters and "oracle-conv" in args.rows and not args.curve:
        parser.error("--oracle-iters equals --iters: the converged oracle would be the equal-budget one")
    # The curve runs on the tuning splits, so it shares their workdir (and its oracle runs).
    work = args.workdir or REPO / "runs" / "bench" / f"quality-{args.setting}-{protocol.kind}"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "quality.log"
    began = time.perf_counter()
    command = command_line(args, parser)
    subset = args.score_on or setting.subsets[protocol.kind]
    if args.curve:
        chains = run_units(args, setting, subset, split_seeds, train_seeds, ["oracle"], work, log,
                           oracle_iters=args.oracle_iters, iters_of=args.curve)
        publish(curve_section(chains, args, setting, subset, command, began, split_seeds), args.out, args.section or f"quality-{name}")
        return
    rows = [row for row in args.rows if row != "oracle-conv"]
    chains = run_units(args, setting, subset, split_seeds, train_seeds, rows, work, log,
                       oracle_iters=args.oracle_iters)
    if "oracle-conv" in args.rows:
        chains += run_units(args, setting, subset, split_seeds, args.oracle_seeds, ["oracle-conv"], work, log,
                            oracle_iters=args.oracle_iters)
    runs, pseudo = collect(chains)
    minutes = (time.perf_counter() - began) / 60
    trainings = training_outputs(chains)
    lines = [
        heading(f"Quality, {args.setting} data: {'REPORTED (held-out images)' if protocol.kind == 'report' else 'tuning'}",
                args),
        "",
        f"Command: `{command} --out BENCHMARKS.md`  ",
        f"Machine: {machine_line()}; {minutes:.1f} minutes for this run of the command "
        f"({len(trainings)} trainings; those already in the workdir were reused).  ",
        f"Data: {setting.description}. Split seeds {', '.join(map(str, split_seeds))}; training seeds "
        f"{', '.join(map(str, train_seeds))} (converged oracle: {', '.join(map(str, args.oracle_seeds))}, "
        f"{args.oracle_iters} steps). Scored on the **{subset}** images" + scored_note(args, protocol.kind) + "  ",
        f"Every other training: {args.iters} steps of the tiny preset, batch 8; retraining "
        f"{args.retrain_iters or args.iters} steps from the one-stage weights. Mean ± sd over the runs. "
        "*novel found*: IoU of the union of the novel classes; *novel renamed*: novel mIoU under the best "
        "one-to-one renaming of the predicted novel classes (what the naming costs is the gap to *novel*); "
        f"*boundary mIoU*: mIoU of the pixels within {BOUNDARY_BAND} px of a label edge (`eval --boundary-band`)."
        + ("" if setting.oracle_per_split else
           " Here the split seed only chooses the novel classes, so an oracle training is the same on every "
           "split (identical weights): each is trained once per training seed, on the first split, and its "
           "confusion matrix is scored under every split's classes; its sd over splits is the spread between "
           "class choices, not between trainings."),
        "",
        *table(runs, ordered(args.rows), split_seeds),
        "",
    ]
    comparisons = [f"- {row_label(a)} vs {row_label(b)}: {paired(novel(runs, a), novel(runs, b))}"
                   for a, b in comparisons_of(ordered(args.rows)) if runs.get(a) and runs.get(b)]
    if comparisons:
        lines += ["Paired differences of novel mIoU (same split and training seed), mean and 95% interval:", "",
                  *comparisons]
    if pseudo:
        lines += ["", "Pseudo labels on the training images, novel mIoU against the full labels: " + "; ".join(
            f"{row} {spread(values)}" for row, values in sorted(pseudo.items())) + "."]
    publish(lines, args.out, args.section or f"quality-{name}")


def novel(runs: dict[str, dict[tuple, dict]], row: str) -> dict[tuple, float]:
    return {unit: result["novel_miou"] for unit, result in runs[row].items()}


def heading(text: str, args: argparse.Namespace) -> str:
    """A section's heading, with ``--title`` after it."""
    return f"## {text}" + (f" ({args.title})" if args.title else "")


def scored_note(args: argparse.Namespace, kind: str) -> str:
    """What the scored images are to the protocol, for the table's data line."""
    if args.score_on:
        return (f" (`--score-on {args.score_on}`: the tuning runs' models scored on other images, to see how "
                "the tuning figures carry over; nothing is chosen on them).")
    if kind == "report":
        return " (held out: never used to choose a setting)."
    return " (used to choose settings: not a figure to report)."


def curve_section(chains: list[Chain], args: argparse.Namespace, setting: Setting, subset: str, command: str,
                  began: float, split_seeds: list[int]) -> list[str]:
    points: dict[int, list[dict]] = {}
    for chain in chains:
        steps = int(chain.name.rsplit(",", 1)[1].split()[0])
        for path in chain.scores.values():
            points.setdefault(steps, []).append(json.loads(path.read_text()))
    lines = [
        heading(f"Quality, {args.setting} data: the oracle's learning curve (tuning)", args),
        "",
        f"Command: `{command} --out BENCHMARKS.md`  ",
        f"Machine: {machine_line()}; {(time.perf_counter() - began) / 60:.1f} minutes for this run of the command.  ",
        f"Data: {setting.description}; scored on the {subset} images (tuning). Each budget is a separate "
        f"run with its own poly schedule; split seed(s) {', '.join(map(str, split_seeds))}, training seed 0"
        + ("." if setting.oracle_per_split else " (the split seed only chooses the novel classes, so the oracle's "
           "training is the same on every split)."),
        "",
        "| steps | runs | mIoU | base | novel |",
        "|---|---|---|---|---|",
    ]
    for steps in sorted(points):
        values = points[steps]
        lines.append(f"| {steps} | {len(values)} | " + " | ".join(
            spread([v[key] for v in values]) for key in ("miou", "base_miou", "novel_miou")) + " |")
    return lines


if __name__ == "__main__":
    main()
