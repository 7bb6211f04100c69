"""A run's training settings: the preset for its split, then ``--set KEY=VALUE`` overrides, then the
named options; every refusal names the option the user typed."""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Sequence

import numpy as np

from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.errors import UserError
from simformer_cli.settings.training import (
    MAX_LR, MAX_SEED, Method, PresetName, TrainSettings, batch_problem, preset_settings,
)


#: An optional loss term's switch -> (its name, how to turn it on), for refusing its settings while it is off.
_OFF_TERMS = {
    "regularizer": ("the regularizer", "add --regularizer dfr (or --set loss.regularizer=dfr)"),
    "partition": ("the novel partition", "add --set loss.partition=true"),
    "novel_mil": ("the novel MIL term", "add --set loss.novel_mil=true"),
    "elimination": ("naming by elimination", "add --set loss.elimination=true"),
}


def resolve_settings(
    split: SplitArtifact, *, preset: PresetName, method: Method, iters: int | None, batch_size: int | None,
    seed: int | None, lr: float | None, overrides: Sequence[str] = (), world_size: int = 1,
) -> TrainSettings:
    """The preset for ``split``, then ``--set KEY=VALUE`` overrides, then the named options.

    Also checks that the global batch cuts into the micro-batches of ``world_size`` processes, so a
    batch the loop cannot use is refused before anything is written.
    """
    sizes = split.sizes("train")
    short_side = int(np.median(sizes.min(axis=1)))
    settings = preset_settings(preset, num_classes=split.num_classes, dataset=split.manifest.params.dataset,
                               image_size=short_side, method=method)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed}: expected an integer from 0 to {MAX_SEED} (2**63 - 1)")
    if lr is not None and not (math.isfinite(lr) and 0 < lr <= MAX_LR):
        raise UserError(f"--lr {lr}: expected a finite learning rate above 0 and at most {MAX_LR:g}, e.g. 0.001")
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key == "preset":
            raise UserError(f"--set {item}: choose the preset with --preset")
        if key == "method":  # it decides the preset's losses and which labels training reads: one place only
            raise UserError(f"--set {item}: choose the method with `train --method` "
                            "(retrain always trains on pseudo labels)")
    data = apply_overrides(settings.model_dump(context={"every_setting": True}), overrides)
    for key, value in (("iters", iters), ("batch_size", batch_size), ("seed", seed)):
        if value is not None:
            data[key] = value
    if lr is not None:
        data["optim"]["lr"] = lr
    try:
        resolved = TrainSettings.model_validate(data)
    except ValueError as exc:
        if not hasattr(exc, "errors"):
            raise UserError(f"training settings: {exc}") from None
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        where = ".".join(str(part) for part in first["loc"])
        given = {"iters": iters, "batch_size": batch_size, "seed": seed, "optim.lr": lr}
        if where not in given and "batch size" in message:  # the pairs check of the whole settings
            where = "batch_size"
        if given.get(where) is not None:  # name the option the user typed, with the value given
            raise UserError(f"--{where.removeprefix('optim.').replace('_', '-')} {given[where]}: {message}") from None
        typed = [item for item in overrides if item.partition("=")[0].strip() == where]
        if typed:
            raise UserError(f"--set {typed[-1]}: {message}") from None
        raise UserError(f"training settings: {where + ': ' if where else ''}{message}") from None
    # Settings of an option that is off would do nothing and not even be recorded.
    for switch, (prefix, on) in resolved.loss.optional_terms().items():
        unused = [item for item in overrides if item.partition("=")[0].strip().startswith(f"loss.{prefix}")]
        if not on and unused:
            what, fix = _OFF_TERMS[switch]
            raise UserError(f"--set {unused[0]}: {what} is off, so this setting would do nothing; {fix}")
    problem = batch_problem(resolved.batch_size, world_size, resolved.loss.needs_pairs)
    if problem:
        if batch_size is not None:
            raise UserError(f"--batch-size {batch_size}: {problem}")
        typed = [item for item in overrides if item.partition("=")[0].strip() == "batch_size"]
        if typed:
            raise UserError(f"--set {typed[-1]}: {problem}")
        raise UserError(f"the preset's batch size {resolved.batch_size}: {problem}; pass --batch-size")
    return resolved


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``KEY=VALUE`` items (dotted keys into the settings, values read as JSON where they
    parse, else as text) to a settings dump; an unknown key is a :class:`UserError`."""
    data = json.loads(json.dumps(data))  # a deep copy
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item}: expected KEY=VALUE, e.g. --set loss.complementary=false")
        parts = key.split(".")
        node = data
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                known = sorted(node) if isinstance(node, dict) else []
                near = difflib.get_close_matches(part, known, n=1)
                where = ".".join(parts[:depth])
                hint = f"did you mean {'.'.join([*parts[:depth], near[0]])}?" if near else (
                    f"known keys{' under ' + where if where else ''}: {', '.join(known)}")
                raise UserError(f"--set {item}: no setting {key}; {hint}")
            if depth == len(parts) - 1:
                if isinstance(node[part], dict):
                    raise UserError(f"--set {item}: {key} is a group; set one of its keys, "
                                    f"e.g. {key}.{next(iter(node[part]))}")
                try:
                    node[part] = json.loads(text)
                except ValueError:
                    node[part] = text
            else:
                node = node[part]
    return data
