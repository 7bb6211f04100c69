"""Choosing the novel classes: a seeded ratio draw, the published splits, or an explicit list
(:func:`choose_novel` picks by the split's settings).

The ratio draw is defined without any random-number library so it gives the same answer on every
machine and every numpy version: the number of novel classes is ``round(K * N / (B + N))``
(at least 1, at most K - 1), and the novel classes are the eligible class ids with the smallest
``sha256("simformer-split:{seed}:{class_id}")``. Classes a dataset marks ``always_base`` are not
eligible.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from simformer_cli.artifacts.split import SplitParams
from simformer_cli.data.official_splits import official_novel_classes
from simformer_cli.data.source import RawDataset
from simformer_cli.errors import UserError

RATIO_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_ratio(text: str) -> tuple[int, int]:
    """Parse ``B:N`` (base to novel), both positive integers."""
    match = RATIO_PATTERN.match(text)
    if not match:
        raise UserError(f"--ratio {text!r}: expected BASE:NOVEL with two positive integers, e.g. 3:1")
    base, novel = int(match.group(1)), int(match.group(2))
    if base <= 0 or novel <= 0:
        raise UserError(f"--ratio {text!r}: both parts must be at least 1 (a split needs base and novel classes), e.g. 3:1")
    return base, novel


def novel_count(num_classes: int, ratio: tuple[int, int]) -> int:
    base, novel = ratio
    # Round half up, independent of Python's banker's rounding.
    count = (2 * num_classes * novel + (base + novel)) // (2 * (base + novel))
    return min(max(count, 1), num_classes - 1)


def _rank_key(seed: int, class_id: int) -> str:
    return hashlib.sha256(f"simformer-split:{seed}:{class_id}".encode()).hexdigest()


def draw_novel_classes(
    num_classes: int, ratio: tuple[int, int], seed: int, always_base: Sequence[int] = ()
) -> tuple[int, ...]:
    """The deterministic ratio draw described in the module docstring; sorted class ids."""
    count = novel_count(num_classes, ratio)
    eligible = [c for c in range(num_classes) if c not in set(always_base)]
    if count > len(eligible):
        raise UserError(
            f"--ratio {ratio[0]}:{ratio[1]} needs {count} novel classes but only {len(eligible)} classes "
            "are not marked always_base; lower the novel share"
        )
    return tuple(sorted(sorted(eligible, key=lambda c: _rank_key(seed, c))[:count]))


def resolve_class_list(spec: str, class_names: Sequence[str]) -> tuple[int, ...]:
    """Turn ``car,person`` or ``3,12`` (names and ids may be mixed) into sorted class ids."""
    index = {name.lower(): i for i, name in enumerate(class_names)}
    ids: set[int] = set()
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.isdigit():
            class_id = int(item)
            if class_id >= len(class_names):
                raise UserError(f"--novel-classes: class id {class_id} is out of range (0..{len(class_names) - 1})")
        elif item.lower() in index:
            class_id = index[item.lower()]
        else:
            close = [n for n in class_names if item.lower() in n.lower()][:5]
            hint = f"; did you mean {', '.join(close)}?" if close else "; see the dataset's class list"
            raise UserError(f"--novel-classes: unknown class {item!r}{hint}")
        ids.add(class_id)
    if not ids:
        raise UserError("--novel-classes: no classes given; pass names or ids separated by commas")
    if len(ids) >= len(class_names):
        raise UserError("--novel-classes: at least one class must stay base")
    return tuple(sorted(ids))


def choose_novel(params: SplitParams, raw: RawDataset) -> tuple[int, ...]:
    if params.selection == "official":
        return official_novel_classes(params.dataset, params.official_split)  # type: ignore[arg-type]
    if params.selection in ("explicit", "tags"):
        return resolve_class_list(",".join(params.requested_novel or []), raw.class_names)
    return draw_novel_classes(raw.num_classes, params.ratio, params.seed, raw.always_base)  # type: ignore[arg-type]
