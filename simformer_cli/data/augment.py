"""Training augmentation: random short-side resize, random crop, SSD-style colour jitter,
horizontal flip, and padding to the crop size (the settings are ``settings.augment``).

Works on numpy arrays with an explicit ``numpy.random.Generator`` so every sample's augmentation is
a pure function of its seed: training is reproducible and resumes exactly.
"""

from __future__ import annotations

import cv2
import numpy as np

from simformer_cli.settings.augment import AugmentSettings

IMAGE_PAD_VALUE = 128


def resize_short_side(image: np.ndarray, label: np.ndarray, short: int, max_long: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = label.shape[:2]
    scale = min(short / min(h, w), max_long / max(h, w))
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    if size == (w, h):
        return image, label
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    return image, label


def _color_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation and hue, each applied with probability 1/2.

    Every step is a function of one uint8 channel value (float32 arithmetic, clipped and truncated
    back to uint8 between colour spaces), so each is applied as a 256-entry lookup table computed
    with that same arithmetic: the result is the same as computing it per pixel, at a fraction of
    the cost.
    """
    values = np.arange(256, dtype=np.float32)
    before = values.copy()
    if rng.random() < 0.5:
        before += rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    if contrast is not None and contrast_first:
        before *= contrast
    hsv = cv2.cvtColor(cv2.LUT(image, _to_uint8(before)), cv2.COLOR_RGB2HSV)
    saturation = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    hue = int(rng.integers(-9, 10)) if rng.random() < 0.5 else None
    if saturation is not None or hue is not None:
        tables = [values.copy(), values.copy(), values]
        if saturation is not None:
            tables[1] = np.clip(tables[1] * saturation, 0, 255)
        if hue is not None:
            tables[0] = (tables[0] + hue) % 180  # OpenCV hue is degrees / 2
        hsv = cv2.LUT(hsv, np.stack([_to_uint8(table) for table in tables], axis=-1)[:, None, :])
    work = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if contrast is not None and not contrast_first:
        work = cv2.LUT(work, _to_uint8(values * contrast))
    return work


def _to_uint8(table: np.ndarray) -> np.ndarray:
    return np.clip(table, 0, 255).astype(np.uint8)


def augment(
    image: np.ndarray, label: np.ndarray, settings: AugmentSettings, rng: np.random.Generator, ignore_index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augmented (crop, crop, 3) image, (crop, crop) label and pad mask (True where padded).

    ``label`` may also be (H, W, C): C label maps of the image cut by the same draws (nearest
    resizing keeps up to four channels), returned as (crop, crop, C).
    """
    short = int(rng.choice(settings.short_sides))
    image, label = resize_short_side(image, label, short, settings.max_long_side)
    h, w = label.shape[:2]
    crop = settings.crop
    y0 = int(rng.integers(0, h - crop + 1)) if h > crop else 0
    x0 = int(rng.integers(0, w - crop + 1)) if w > crop else 0
    image, label = image[y0 : y0 + crop, x0 : x0 + crop], label[y0 : y0 + crop, x0 : x0 + crop]
    if settings.color_jitter:
        image = _color_jitter(image, rng)
    if settings.flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    ch, cw = label.shape[:2]
    out_image = np.full((crop, crop, 3), IMAGE_PAD_VALUE, dtype=np.uint8)
    out_label = np.full((crop, crop, *label.shape[2:]), ignore_index, dtype=label.dtype)
    pad = np.ones((crop, crop), dtype=bool)
    out_image[:ch, :cw] = image
    out_label[:ch, :cw] = label
    pad[:ch, :cw] = False
    return out_image, out_label, pad
