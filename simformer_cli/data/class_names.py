"""Class names and raw-id mappings of the two benchmark datasets.

ADE20K-150 (SceneParsing, ``ADEChallengeData2016``)
    150 classes in the official order of ``objectInfo150`` (first name of each entry, with the
    usual short forms: "windowpane", "railing", "apparel", "waterfall", ...). The release's label
    PNGs hold 0 = "other"/unlabelled and 1..150 = these classes; MaskFormer's converted PNGs hold
    raw - 1 (0..149, 255 = ignore), which is also the id space of SimFormer's class splits.

COCO-Stuff-10K-171
    80 COCO thing classes in COCO order (person ... toothbrush), then the 91 stuff classes in
    COCO-Stuff order (banner ... wood): 171 contiguous ids, the id space of MaskFormer's converted
    PNGs (``S - 2`` of the v1.0 ``.mat`` files) and of SimFormer's class splits. Stuff names follow
    COCO-Stuff v1.1 (``desk-stuff``, ``door-stuff``, ``mirror-stuff``).

Raw COCO-Stuff category ids (COCO-Stuff v1.1 ``.mat``/JSON, COCO-Stuff-164K):
    things use COCO's 1..90 with gaps (12, 26, 29, 30, 45, 66, 68, 69, 71, 83 and 91 are unused),
    stuff uses 92..182. 0 means unlabelled (v1.1 ``.mat`` ``S``; in the JSON an unannotated pixel),
    183 is "other" (all things merged) in COCO-Stuff-164K's stuff-only JSON: both map to ignore.
"""

from __future__ import annotations

import numpy as np

from simformer_cli.data.source import INVALID

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

COCO_THING_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip

COCO_STUFF_CLASSES: tuple[str, ...] = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

#: The 171 COCO-Stuff-10K classes, index = contiguous class id.
COCO_STUFF_171_CLASSES: tuple[str, ...] = COCO_THING_CLASSES + COCO_STUFF_CLASSES

#: COCO's thing category ids (1..90) that have no class: removed before COCO was released.
COCO_UNUSED_THING_IDS: tuple[int, ...] = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)

#: Raw COCO(-Stuff) category id of every contiguous class id 0..170.
COCO_STUFF_RAW_IDS: tuple[int, ...] = tuple(
    i for i in range(1, 92) if i not in COCO_UNUSED_THING_IDS
) + tuple(range(92, 183))

#: Raw category id -> contiguous class id (0..170).
COCO_STUFF_RAW_TO_CONTIGUOUS: dict[int, int] = {raw: cid for cid, raw in enumerate(COCO_STUFF_RAW_IDS)}

#: Raw values that mean "no class here": 0 = unlabelled, 183 = "other" (merged things, 164K stuff JSON).
COCO_STUFF_RAW_IGNORE: tuple[int, ...] = (0, 183)


def coco_stuff_raw_lut(ignore_index: int, size: int = 256) -> np.ndarray:
    """Lut from raw COCO-Stuff category ids (0..255) to contiguous ids; unused ids are INVALID (-1)."""
    lut = np.full(size, INVALID, dtype=np.int64)
    for raw, cid in COCO_STUFF_RAW_TO_CONTIGUOUS.items():
        lut[raw] = cid
    for raw in COCO_STUFF_RAW_IGNORE:
        lut[raw] = ignore_index
    return lut


def ade20k_raw_lut(ignore_index: int) -> np.ndarray:
    """Lut of the ADE20K release PNGs: 0 ("other") -> ignore, 1..150 -> 0..149, 151..255 INVALID."""
    lut = np.full(256, INVALID, dtype=np.int64)
    lut[0] = ignore_index
    lut[1 : len(ADE20K_CLASSES) + 1] = np.arange(len(ADE20K_CLASSES))
    return lut


