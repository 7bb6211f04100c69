"""SimFormer's published base/novel class splits, verbatim.

Source: the official code (``prop_former/data/datasets/ADE_20k/info.py`` and
``prop_former/data/datasets/coco_stuff_10k/meta_files/info.py``, variables ``split{k}_novel_dids``).
Ids are contiguous training ids: 0..149 for
ADE20K-150 (see :data:`~simformer_cli.data.class_names.ADE20K_CLASSES`) and 0..170 for
COCO-Stuff-10K-171 (:data:`~simformer_cli.data.class_names.COCO_STUFF_171_CLASSES`). Base = every
id not in the novel list.

COCO-Stuff splits 4..9 are prefixes of one hard-coded random permutation ``COCO_STUFF_RANDP``:
split 4 = first 43 entries (sorted), splits 5..9 = first 51/59/68/76/85 (``int(171 * r)`` for
r = 0.30 .. 0.50), so they are nested.
"""

from __future__ import annotations

from simformer_cli.errors import UserError

ADE20K_NOVEL: dict[int, tuple[int, ...]] = {
    1: (1, 3, 6, 8, 10, 13, 17, 22, 23, 29, 33, 38, 41, 50, 51, 56, 67, 70, 71, 74, 77, 81, 92, 93, 98, 101,
        102, 103, 110, 113, 119, 121, 126, 127, 130, 136, 147, 149),
    2: (0, 10, 21, 27, 28, 29, 34, 40, 42, 43, 51, 57, 58, 65, 66, 68, 69, 73, 76, 78, 85, 88, 90, 100, 105,
        110, 111, 112, 113, 114, 117, 123, 124, 132, 134, 139, 142, 146),
    3: (0, 5, 9, 15, 16, 21, 24, 25, 27, 32, 34, 35, 38, 39, 55, 70, 76, 85, 95, 96, 98, 100, 106, 109, 111,
        118, 119, 124, 128, 132, 134, 135, 136, 138, 140, 141, 143, 144),
    4: (5, 11, 13, 16, 21, 24, 26, 32, 35, 42, 53, 56, 60, 61, 63, 64, 68, 70, 75, 82, 91, 93, 94, 99, 100,
        105, 111, 115, 118, 121, 122, 130, 132, 135, 137, 138, 141, 143),
}  # fmt: skip

#: Hard-coded 100-entry class permutation of the official code; order matters (prefixes = splits 4..9).
COCO_STUFF_RANDP: tuple[int, ...] = (
    170, 112, 3, 26, 121, 69, 50, 87, 14, 13, 58, 106, 17, 134, 164, 161, 100, 151, 24, 114, 25, 92, 12, 61,
    102, 113, 89, 110, 76, 128, 149, 57, 144, 137, 46, 27, 83, 133, 162, 37, 109, 33, 40, 82, 47, 0, 31, 111,
    66, 91, 120, 136, 39, 157, 163, 45, 28, 131, 9, 49, 19, 155, 150, 1, 4, 68, 130, 42, 132, 75, 71, 48, 7,
    85, 116, 96, 93, 159, 139, 115, 95, 105, 78, 156, 54, 5, 11, 44, 65, 88, 62, 60, 41, 104, 107, 8, 168,
    117, 98, 143,
)  # fmt: skip

#: Number of novel classes of COCO-Stuff splits 4..9 (prefix lengths of ``COCO_STUFF_RANDP``).
COCO_STUFF_RANDP_PREFIX: dict[int, int] = {4: 43, 5: 51, 6: 59, 7: 68, 8: 76, 9: 85}

COCO_STUFF_NOVEL: dict[int, tuple[int, ...]] = {
    1: (3, 6, 10, 11, 18, 19, 26, 27, 31, 34, 37, 38, 40, 41, 50, 53, 55, 59, 61, 68, 76, 82, 85, 90, 92, 94,
        103, 106, 108, 112, 113, 117, 120, 127, 129, 131, 141, 146, 155, 156, 159, 166, 169),
    2: (1, 3, 6, 7, 9, 10, 13, 27, 31, 35, 38, 40, 43, 44, 53, 62, 68, 74, 77, 80, 82, 84, 86, 99, 101, 108,
        110, 111, 116, 118, 121, 122, 125, 131, 137, 141, 148, 153, 155, 156, 160, 161, 166),
    3: (0, 5, 10, 13, 15, 16, 20, 23, 25, 27, 28, 31, 33, 34, 35, 36, 40, 43, 47, 50, 51, 58, 62, 69, 80, 81,
        83, 84, 87, 90, 101, 105, 119, 121, 124, 126, 137, 138, 150, 154, 157, 158, 164),
    **{split: tuple(sorted(COCO_STUFF_RANDP[:n])) for split, n in COCO_STUFF_RANDP_PREFIX.items()},
}  # fmt: skip

#: The datasets with published splits: name -> (name as the paper writes it, split number -> novel ids).
PUBLISHED_SPLITS: dict[str, tuple[str, dict[int, tuple[int, ...]]]] = {
    "ade20k": ("ADE20K", ADE20K_NOVEL),
    "coco-stuff-10k": ("COCO-Stuff-10K", COCO_STUFF_NOVEL),
}


def _canonical(dataset: str) -> str:
    key = dataset.strip().lower().replace("_", "-")
    return {"ade": "ade20k", "ade-20k": "ade20k", "coco-stuff": "coco-stuff-10k", "cocostuff-10k": "coco-stuff-10k",
            "cocostuff10k": "coco-stuff-10k", "coco-stuff10k": "coco-stuff-10k"}.get(key, key)  # fmt: skip


def official_split_numbers(dataset: str) -> tuple[int, ...]:
    """The split numbers published for ``dataset`` (ADE20K: 1..4, COCO-Stuff-10K: 1..9)."""
    return tuple(sorted(_lookup(dataset)[1]))


def _lookup(dataset: str) -> tuple[str, dict[int, tuple[int, ...]]]:
    try:
        return PUBLISHED_SPLITS[_canonical(dataset)]
    except KeyError:
        raise UserError(
            f"official class splits exist only for {' and '.join(PUBLISHED_SPLITS)}; got dataset {dataset!r}; "
            "use --ratio or --novel-classes for other datasets"
        ) from None


def official_novel_classes(dataset: str, split: int) -> tuple[int, ...]:
    """Sorted novel class ids of SimFormer's official ``split`` of ``dataset``.

    ``dataset`` is ``"ade20k"`` or ``"coco-stuff-10k"``; an unknown dataset or split number is a
    :class:`UserError` with one line saying which splits exist.
    """
    label, splits = _lookup(dataset)
    if isinstance(split, bool) or not isinstance(split, int) or split not in splits:
        numbers = official_split_numbers(dataset)
        raise UserError(f"{label} has official splits {numbers[0]}-{numbers[-1]}; got {split}")
    return splits[split]
