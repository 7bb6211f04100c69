"""The quality benchmark's plan: where each row's artifacts go (nothing is run)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def quality():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("quality_benchmark", BENCHMARKS / "quality.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up by name
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("quality_benchmark", None)
        sys.path.remove(str(BENCHMARKS))


def outputs(chain) -> list[Path]:
    return [Path(c[c.index("--out") + 1]) for c in chain.commands if "--out" in c]


def plan(quality, split: Path, seed: int, rows: list[str], oracle_from: Path | None = None):
    folder = split.parent / f"train{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    return quality.chains_for(f"split 0, seed {seed}", split, folder, rows, "val", seed=seed, iters=1000,
                              oracle_iters=4000, retrain_iters=1000, overrides=[], oracle_from=oracle_from)


def test_weak_rows_live_in_their_training_seeds_folder_and_oracles_in_one_home_per_budget(quality, tmp_path) -> None:
    split = tmp_path / "split0" / "split.zarr"
    chains = {c.name.split("/")[0]: c for c in plan(quality, split, 1, ["oracle", "oracle-conv", "wsmf", "simformer",
                                                                         "finetune", "cam"])}
    assert set(chains) == {"oracle", "oracle-conv", "wsmf", "simformer", "cam"}  # finetune rides on simformer's chain
    assert {p.parent.name for p in outputs(chains["oracle"])} == {"oracle-1000-seed1"}
    assert {p.parent.name for p in outputs(chains["oracle-conv"])} == {"oracle-4000-seed1"}
    for row in ("wsmf", "simformer", "cam"):
        assert {p.parent.name for p in outputs(chains[row])} == {"train1"}, row
    assert {p.name for p in outputs(chains["simformer"])} >= {"simformer.zarr", "finetune-pseudolabels.zarr",
                                                              "finetune-retrained.zarr"}
    assert chains["simformer"].trainings == 2 and chains["wsmf"].trainings == 1
    everything = [p for chain in chains.values() for p in outputs(chain)]
    assert len(everything) == len(set(everything))  # no two commands write one artifact


def test_an_oracle_shared_across_splits_is_rescored_not_retrained(quality, tmp_path) -> None:
    first, second = tmp_path / "split0", tmp_path / "split1" / "split.zarr"
    chains = {c.name.split("/")[0]: c for c in plan(quality, second, 0, ["oracle", "simformer"], oracle_from=first)}
    assert chains["oracle"].commands == [] and chains["oracle"].trainings == 0
    assert chains["oracle"].derived == {"oracle": (first / "oracle-1000" / "oracle-metrics-val.zarr", second)}
    assert {p.parent for p in outputs(chains["simformer"])} == {second.parent / "train0"}


def test_each_retrained_row_rides_on_the_chain_of_the_model_it_starts_from(quality, tmp_path) -> None:
    split = tmp_path / "split0" / "split.zarr"
    chains = {c.name.split("/")[0]: c for c in plan(quality, split, 0, ["simformer", "finetune", "simformer-part",
                                                                         "finetune-part"])}
    assert set(chains) == {"simformer", "simformer-part"}
    part = chains["simformer-part"]
    assert set(part.scores) == {"simformer-part", "finetune-part"} and part.trainings == 2
    train, retrain = (c for c in part.commands if c[3] in ("train", "retrain"))
    assert "loss.partition=true" in train and retrain[retrain.index("--init-from") + 1] == str(train[train.index("--out") + 1])
    # Asked for alone, a retrained row still trains its starting model, and scores only the retrained one.
    alone = plan(quality, split, 0, ["finetune-part"])
    assert [c.name.split("/")[0] for c in alone] == ["finetune-part"] and set(alone[0].scores) == {"finetune-part"}


def test_a_row_variant_trains_with_its_settings_under_its_own_name_and_is_compared_with_its_row(quality, tmp_path):
    variant = quality.row_argument("simformer-dfr+loss.dfr_weight=5+loss.dfr_points=64")
    chains = plan(quality, tmp_path / "split0" / "split.zarr", 0, ["simformer", "simformer-dfr", variant])
    train = chains[2].commands[0]
    assert train[train.index("--out") + 1].endswith("simformer-dfr_loss.dfr_weight-5_loss.dfr_points-64.zarr")
    assert "--regularizer" in train and train[-4:-2] == ["--set", "loss.dfr_points=64"]
    assert quality.row_label(variant) == "SimFormer one-stage + DFR regularizer (loss.dfr_weight=5, loss.dfr_points=64)"
    assert quality.comparisons_of(quality.ordered([variant, "simformer-dfr", "simformer"])) == [
        ("simformer-dfr", "simformer"), (variant, "simformer-dfr"), (variant, "simformer")]
    for bad in ("cam+loss.x=1", "oracle+loss.x=1", "simformer+", "simformer+loss.partition", "nothing"):
        with pytest.raises(argparse.ArgumentTypeError):
            quality.row_argument(bad)


def test_retrained_variants_share_their_one_stage_model_and_choose_their_pseudo_label_rule(quality, tmp_path) -> None:
    elimination = quality.row_argument("finetune+loss.elimination=true")
    ranked = quality.row_argument("finetune+loss.elimination=true+pseudolabel.among=quantile")
    chains = plan(quality, tmp_path / "split0" / "split.zarr", 0, ["simformer", "finetune", elimination, ranked])
    assert len(chains) == 2  # simformer (+ finetune), and one chain for the elimination model's two retrainings
    varied = chains[1]
    assert set(varied.scores) == {elimination, ranked} and varied.trainings == 3
    train = varied.commands[0]
    assert train[train.index("--out") + 1].endswith("simformer_loss.elimination-true.zarr")
    assert "loss.elimination=true" in train and not any("pseudolabel" in str(part) for part in train)
    rules = [c[c.index("--among") + 1] for c in varied.commands if c[3] == "pseudolabel"]
    assert rules == ["image", "quantile"]
    assert [c[c.index("--among") + 1] for c in chains[0].commands if c[3] == "pseudolabel"] == ["image"]
    everything = [p for chain in chains for p in outputs(chain)]
    assert len(everything) == len(set(everything))
    assert (ranked, "finetune") in quality.comparisons_of([ranked, "finetune"])
    with pytest.raises(argparse.ArgumentTypeError, match="retrained rows"):
        quality.row_argument("simformer+pseudolabel.among=quantile")


def test_a_second_round_retrains_on_the_first_retrained_models_pseudo_labels(quality, tmp_path) -> None:
    once = quality.row_argument("finetune+pseudolabel.among=quantile")
    twice = quality.row_argument("finetune+pseudolabel.among=quantile+pseudolabel.rounds=2")
    chains = plan(quality, tmp_path / "split0" / "split.zarr", 0, ["simformer", once, twice])
    assert len(chains) == 1 and chains[0].trainings == 3  # one-stage, round 1 (shared by both rows), round 2
    folder = tmp_path / "split0" / "train0"
    labels = [c for c in chains[0].commands if c[3] == "pseudolabel"]
    retrains = [c for c in chains[0].commands if c[3] == "retrain"]
    first, second = "finetune_pseudolabel.among-quantile", "finetune_pseudolabel.among-quantile-round2"
    assert [c[c.index("--model") + 1] for c in labels] == [str(folder / "simformer.zarr"),
                                                            str(folder / f"{first}-retrained.zarr")]
    assert [c[c.index("--init-from") + 1] for c in retrains] == [str(folder / "simformer.zarr"),
                                                                  str(folder / f"{first}-retrained.zarr")]
    assert all(c[c.index("--among") + 1] == "quantile" for c in labels)
    assert chains[0].scores[once].name == f"{first}-metrics-val.json"
    assert chains[0].scores[twice].name == f"{quality.row_tag(twice)}-metrics-val.json"
    infers = [c for c in chains[0].commands if c[3] == "infer"]
    assert infers[-1][infers[-1].index("--model") + 1] == str(folder / f"{second}-retrained.zarr")
    alone = plan(quality, tmp_path / "split0" / "split.zarr", 0, [twice])
    assert alone[0].trainings == 3 and set(alone[0].scores) == {twice}
    for bad in ("finetune+pseudolabel.rounds=0", "finetune+pseudolabel.rounds=two", "simformer+pseudolabel.rounds=2"):
        with pytest.raises(argparse.ArgumentTypeError):
            quality.row_argument(bad)


def test_an_interrupted_training_continues_from_its_checkpoint_and_starts_over_if_it_cannot(quality, tmp_path, monkeypatch):
    out = tmp_path / "simformer.zarr"
    train = ["python", "-m", "simformer_cli", "train", "--out", str(out), "--iters", "1000"]
    assert not quality.interrupted(train)  # nothing left behind
    step = tmp_path / ".simformer.zarr.partial" / "checkpoints" / "step-0000200"
    step.mkdir(parents=True)
    (step / "state.json").write_text("{}")
    assert quality.interrupted(train) and not quality.interrupted(["python", "-m", "simformer_cli", "infer", "--out", str(out)])
    runs = []

    def fake_run(command, **_):
        runs.append(command)
        return argparse.Namespace(returncode=2 if "--resume" in command else 0, stdout="")

    monkeypatch.setattr(quality.subprocess, "run", fake_run)
    quality.run_command(train, {}, tmp_path / "log")
    assert runs == [train + ["--resume"], train]  # the checkpoint was refused: started over
    out.mkdir()
    assert not quality.interrupted(train)  # finished: the command's own up-to-date check decides


def test_the_command_line_shown_with_a_table_quotes_what_the_shell_would_split(quality) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--title", default=None)
    parser.add_argument("--rows", nargs="+", default=["simformer"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(["--title", "weight of the DFR regularizer", "--rows", "simformer", "simformer-dfr",
                              "--out", "B.md"])
    shown = quality.command_line(args, parser)
    assert shown == "python benchmarks/quality.py --title 'weight of the DFR regularizer' --rows simformer simformer-dfr"


def test_score_on_names_the_images_and_says_nothing_is_chosen_on_them(quality) -> None:
    scored = quality.scored_note(argparse.Namespace(score_on="val"), "tuning")
    assert "--score-on val" in scored and "nothing is chosen" in scored
    assert "never used to choose" in quality.scored_note(argparse.Namespace(score_on=None), "report")


def test_a_subset_the_split_lacks_is_refused_before_training(quality, tmp_path) -> None:
    split = tmp_path / "split.zarr"
    split.mkdir()
    subsets = {"train": {}, "val": {}, "test": {}}
    (split / "manifest.json").write_text(json.dumps({"manifest": {"summary": {"subsets": subsets}}}))
    quality.check_subset(split, "val")  # present: nothing to say
    with pytest.raises(SystemExit, match="no 'holdout' images to score on .*test, train, val"):
        quality.check_subset(split, "holdout")


def test_pseudo_label_options_reach_every_rounds_pseudolabel_under_the_rows_own_names(quality, tmp_path) -> None:
    plain = quality.row_argument("finetune+pseudolabel.among=groups+pseudolabel.rounds=2")
    sure = quality.row_argument("finetune+pseudolabel.among=groups+pseudolabel.unnamed=ignore+pseudolabel.groups=8"
                                "+pseudolabel.rounds=2")
    chains = plan(quality, tmp_path / "split0" / "split.zarr", 0, ["simformer", plain, sure])
    assert len(chains) == 1 and chains[0].trainings == 5  # one model; two rounds for each rule
    labels = [c for c in chains[0].commands if c[3] == "pseudolabel"]
    options = [tuple(c[c.index("--among"):c.index("--device")]) for c in labels]
    assert options == [("--among", "groups")] * 2 + [("--among", "groups", "--unnamed", "ignore", "--groups", "8")] * 2
    everything = [p for chain in chains for p in outputs(chain)]
    assert len(everything) == len(set(everything))
    with pytest.raises(argparse.ArgumentTypeError, match="retrained rows"):
        quality.row_argument("simformer+pseudolabel.unnamed=ignore")
