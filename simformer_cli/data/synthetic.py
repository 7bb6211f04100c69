"""The built-in synthetic dataset, written in the documented folder format.

Every class looks like one point of a factorised appearance space, colour x texture x scale, laid out
as a Latin square so each colour and each texture is shared by several classes and no two classes
share both. Whatever base/novel split is drawn later, a novel class is then (almost always) a new
combination of factor values that base classes already show: what a model learns to tell apart on
base classes also tells novel classes apart.

A scene is class 0 ("background") over the whole image plus a few shapes (ellipses, polygons,
blobs) of distinct other classes, later ones occluding earlier ones. Labels are the visible class
per pixel, with a small share left unlabelled (255): part of the boundary band and small patches.

Output is byte-identical on every machine: each image draws from its own ``PCG64`` stream seeded by
``(seed, subset, index)``, pixels come only from exactly rounded float operations (+ - * / sqrt,
floor; no transcendental functions, no float reductions), and PNGs are encoded here because zlib
builds (zlib, zlib-ng) compress the same data to different bytes.
"""

from __future__ import annotations

import ctypes
import heapq
import json
import math
import multiprocessing
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from simformer_cli.errors import UserError

#: Bump whenever the bytes written for some settings change.
GENERATOR_VERSION = 1
IGNORE_INDEX = 255
SUBSETS = ("train", "val")

#: Colour factor: name and light tone; the dark tone of a pattern is DARK_TONE times the light one.
COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("grey", (176, 176, 176)),
    ("red", (228, 52, 44)),
    ("green", (64, 196, 72)),
    ("blue", (60, 100, 236)),
    ("yellow", (236, 212, 48)),
    ("magenta", (214, 64, 206)),
    ("cyan", (52, 204, 216)),
    ("orange", (244, 140, 36)),
    ("purple", (136, 76, 212)),
    ("pink", (244, 148, 188)),
    ("lime", (168, 228, 64)),
    ("brown", (156, 100, 56)),
)
DARK_TONE = 0.42
TEXTURES = ("noise", "stripes", "checker", "dots", "waves", "grid")
#: Scale factor: name and pattern period in pixels at 128x128 (larger images scale it up).
SCALES = (("coarse", 14.0), ("fine", 6.0))
MAX_CLASSES = len(TEXTURES) * len(COLOURS)
PIXEL_NOISE = 6  # uniform integer noise per pixel and channel, +-

#: Unit vectors at whole degrees, rounded so that libm differences in the last bit cannot leak.
DIRECTIONS = np.array(
    [(round(math.cos(math.radians(d)), 9), round(math.sin(math.radians(d)), 9)) for d in range(360)]
)


class SyntheticSettings(BaseModel):
    """What the synthetic dataset looks like. Equal settings and GENERATOR_VERSION give equal bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, ge=0, lt=2**63)
    num_classes: int = Field(16, ge=2, le=MAX_CLASSES)
    train_images: int = Field(1500, ge=1, le=999_999)
    val_images: int = Field(300, ge=1, le=999_999)
    image_size: int = Field(128, ge=32, le=1024)
    min_regions: int = Field(2, ge=1, le=16)
    max_regions: int = Field(6, ge=1, le=16)
    unlabelled_fraction: float = Field(0.03, ge=0.0, le=0.25)

    @model_validator(mode="after")
    def _regions_ordered(self) -> SyntheticSettings:
        if self.min_regions > self.max_regions:
            raise ValueError(f"min_regions ({self.min_regions}) exceeds max_regions ({self.max_regions})")
        return self


@dataclass(frozen=True)
class ClassAppearance:
    name: str
    colour: str
    texture: str
    scale: str


def class_appearances(num_classes: int) -> tuple[ClassAppearance, ...]:
    """The K classes as a Latin square: class k in row r, column c has colour c, texture (r + c)."""
    n_textures = min(len(TEXTURES), math.isqrt(num_classes - 1) + 1)
    n_colours = -(-num_classes // n_textures)
    classes = []
    for k in range(num_classes):
        row, column = divmod(k, n_colours)
        colour, texture, scale = COLOURS[column][0], TEXTURES[(row + column) % n_textures], SCALES[row % 2][0]
        name = "background" if k == 0 else f"{colour}-{texture}-{scale}"
        classes.append(ClassAppearance(name, colour, texture, scale))
    return tuple(classes)


def generate_synthetic(
    out_dir: Path,
    settings: SyntheticSettings,
    progress: Callable[[int], None] | None = None,
    *,
    workers: int = 2,
) -> None:
    """Write the dataset into ``out_dir`` (absent or empty); ``classes.json`` is written last.

    ``progress`` gets the number of images finished so far after each chunk of images.
    ``workers`` is the number of worker processes (0: render in this process); it changes the
    speed, never the bytes.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: folder is not empty; choose a new folder or delete it")
    for subset in SUBSETS:
        (out_dir / "images" / subset).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / subset).mkdir(parents=True, exist_ok=True)
    chunks = list(_chunks(settings))
    done = 0
    if workers > 0 and len(chunks) > 1:
        # fork where it is safe: the workers touch no threads or locks, and spawn would re-run
        # the caller's main module; elsewhere spawn
        method = "fork" if sys.platform == "linux" else "spawn"
        with multiprocessing.get_context(method).Pool(min(workers, len(chunks)), _keep_freed_memory) as pool:
            jobs = [(out_dir, settings, *chunk) for chunk in chunks]
            for finished in pool.imap_unordered(_write_chunk, jobs):
                done += finished
                if progress is not None:
                    progress(done)
    else:
        for chunk in chunks:
            done += _write_chunk((out_dir, settings, *chunk))
            if progress is not None:
                progress(done)
    appearances = class_appearances(settings.num_classes)
    description = {
        "generator_version": GENERATOR_VERSION,
        "settings": settings.model_dump(),
        "classes": [asdict(a) for a in appearances],
    }
    (out_dir / "synthetic.json").write_text(json.dumps(description, indent=2) + "\n")
    classes = {"classes": [a.name for a in appearances], "ignore_index": IGNORE_INDEX}
    (out_dir / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")


def _keep_freed_memory() -> None:
    """Let a worker's glibc keep freed memory: by default it returns numpy's large temporaries to
    the OS after every image and faults them back in, which costs about 40% of the time."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 16 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _chunks(settings: SyntheticSettings, size: int = 60) -> Iterator[tuple[int, int, int]]:
    for subset_index, count in enumerate((settings.train_images, settings.val_images)):
        for start in range(0, count, size):
            yield subset_index, start, min(start + size, count)


def _write_chunk(job: tuple[Path, SyntheticSettings, int, int, int]) -> int:
    out_dir, settings, subset_index, start, stop = job
    appearances = class_appearances(settings.num_classes)
    subset = SUBSETS[subset_index]
    for index in range(start, stop):
        image, label = render_sample(settings, subset_index, index, appearances)
        (out_dir / "images" / subset / f"{index:06d}.png").write_bytes(encode_png(image))
        (out_dir / "labels" / subset / f"{index:06d}.png").write_bytes(encode_png(label))
    return stop - start


# ----------------------------------------------------------------------------------------- scenes


def render_sample(
    settings: SyntheticSettings, subset_index: int, index: int, appearances: tuple[ClassAppearance, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (H, W, 3) uint8 RGB image and (H, W) uint8 label map."""
    rng = np.random.default_rng([settings.seed, subset_index, index])
    size = settings.image_size
    visible, classes = _scene_classes(rng, settings)
    image = np.zeros((size, size, 3))
    period_scale = max(1.0, size / 128)
    for class_id in classes:
        where = np.flatnonzero(visible == class_id)
        image.reshape(-1, 3)[where] = _paint(rng, appearances[class_id], where, size, period_scale)
    image += rng.integers(-PIXEL_NOISE, PIXEL_NOISE + 1, image.shape, dtype=np.int8)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    label = visible.astype(np.uint8)
    label[_unlabelled(rng, visible, settings.unlabelled_fraction)] = IGNORE_INDEX
    return image, label


def _scene_classes(rng: np.random.Generator, settings: SyntheticSettings) -> tuple[np.ndarray, list[int]]:
    """Class id per pixel (background, then shapes, each left clearly visible) and the classes used."""
    size = settings.image_size
    count = int(rng.integers(settings.min_regions, settings.max_regions + 1))
    others = settings.num_classes - 1
    classes = rng.choice(np.arange(1, settings.num_classes), size=count, replace=count > others)
    min_visible = max(16, int(0.012 * size * size))
    order = np.full((size, size), -1, dtype=np.int64)  # index of the topmost accepted shape
    visible = np.zeros(0, dtype=np.int64)  # pixels still showing of each accepted shape
    kept: list[int] = []
    for class_id in classes:
        for _attempt in range(6):
            window, shape = _random_shape(rng, size)
            covered = order[window][shape]
            remaining = visible - np.bincount(covered + 1, minlength=len(kept) + 1)[1:]
            if covered.size >= min_visible and (remaining >= min_visible).all():
                order[window][shape] = len(kept)
                visible = np.append(remaining, covered.size)
                kept.append(int(class_id))
                break
    lookup = np.array([0, *kept], dtype=np.int64)
    return lookup[order + 1], sorted(set(lookup.tolist()))


def _random_shape(rng: np.random.Generator, size: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """A shape's bounding window in the image and its mask inside that window."""
    radius = size * rng.uniform(0.12, 0.36)
    centre = size * rng.uniform(0.1, 0.9, 2)
    kind = int(rng.integers(3))
    if kind == 0:
        inside, reach = _ellipse(rng, radius)
    elif kind == 1:
        inside, reach = _polygon(rng, radius)
    else:
        inside, reach = _blob(rng, radius)
    y0, x0 = (max(0, int(c - reach) - 1) for c in centre)
    y1, x1 = (max(start, min(size, int(c + reach) + 2)) for c, start in zip(centre, (y0, x0)))
    dy, dx = np.arange(y0, y1)[:, None] - centre[0], np.arange(x0, x1)[None, :] - centre[1]
    return (slice(y0, y1), slice(x0, x1)), np.broadcast_to(inside(dy, dx), (y1 - y0, x1 - x0))


#: Whether points lie inside a shape, given offsets from its centre as a column and a row.
Inside = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _ellipse(rng: np.random.Generator, radius: float) -> tuple[Inside, float]:
    major = radius * rng.uniform(0.7, 1.2)
    minor = major * rng.uniform(0.45, 1.0)
    cos, sin = DIRECTIONS[rng.integers(180)]

    def inside(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        along, across = (dx * cos + dy * sin) / major, (dy * cos - dx * sin) / minor
        return along * along + across * across <= 1.0

    return inside, major


def _polygon(rng: np.random.Generator, radius: float) -> tuple[Inside, float]:
    corners = int(rng.integers(3, 9))
    step = 360 / corners
    angles = (rng.integers(360) + step * np.arange(corners) + rng.uniform(-0.3, 0.3, corners) * step).astype(int)
    reach = radius * rng.uniform(0.6, 1.15, corners)
    vx, vy = DIRECTIONS[angles % 360, 0] * reach, DIRECTIONS[angles % 360, 1] * reach

    def inside(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        result = np.zeros((dy.size, dx.size), dtype=bool)
        for i in range(corners):  # even-odd rule: count edge crossings of a ray towards +x
            xa, ya, xb, yb = vx[i - 1], vy[i - 1], vx[i], vy[i]
            if ya == yb:
                continue
            crosses = (ya > dy) != (yb > dy)
            result ^= crosses & (dx < xa + (dy - ya) * (xb - xa) / (yb - ya))
        return result

    return inside, float(reach.max())


def _blob(rng: np.random.Generator, radius: float) -> tuple[Inside, float]:
    balls = int(rng.integers(3, 6))
    offsets = radius * rng.uniform(-0.6, 0.6, (balls, 2))
    radii = radius * rng.uniform(0.35, 0.65, balls)

    def inside(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        field = np.zeros((dy.size, dx.size))
        for (oy, ox), r in zip(offsets, radii):
            field += r * r / ((dy - oy) * (dy - oy) + (dx - ox) * (dx - ox) + 1.0)
        return field >= 1.0

    return inside, float(np.abs(offsets).max()) * 1.5 + math.sqrt(sum(r * r for r in radii.tolist()))


def _unlabelled(rng: np.random.Generator, visible: np.ndarray, fraction: float) -> np.ndarray:
    """About ``fraction`` of the pixels: part of the one-pixel boundary band, topped up with patches."""
    size = visible.shape[0]
    target = int(round(fraction * rng.uniform(0.6, 1.4) * visible.size))
    band = np.zeros(visible.shape, dtype=bool)
    band[:, :-1] |= visible[:, :-1] != visible[:, 1:]
    band[:-1, :] |= visible[:-1, :] != visible[1:, :]
    band_pixels = np.flatnonzero(band)
    if len(band_pixels) > target:
        # keep whole stretches of the border, not a salt-and-pepper subset of it
        priority = _value_noise(rng, band_pixels // size, band_pixels % size, 10.0, size)
        keep = band_pixels[np.argsort(priority, kind="stable")[:target]]
        band = np.zeros(visible.shape, dtype=bool)
        band.ravel()[keep] = True
        return band
    ys, xs = np.mgrid[0:size, 0:size]
    for _patch in range(8):
        missing = target - int(np.count_nonzero(band))
        if missing <= 0:
            break
        spot = band_pixels[rng.integers(len(band_pixels))] if len(band_pixels) else rng.integers(visible.size)
        cy, cx = divmod(int(spot), size)
        radius = min(max(math.sqrt(missing / math.pi) * rng.uniform(0.6, 1.0), 1.5), 0.08 * size)
        band |= (ys - cy) ** 2 + (xs - cx) ** 2 <= radius * radius
    return band


# --------------------------------------------------------------------------------------- textures


def _paint(
    rng: np.random.Generator, look: ClassAppearance, where: np.ndarray, size: int, period_scale: float
) -> np.ndarray:
    """RGB values (N, 3) of one class at flat pixel indices ``where``, with per-image jitter."""
    ys, xs = (where // size).astype(float), (where % size).astype(float)
    period = dict(SCALES)[look.scale] * period_scale * rng.uniform(0.9, 1.1)
    cos, sin = DIRECTIONS[rng.integers(180)]
    along, across = xs * cos + ys * sin, ys * cos - xs * sin  # a turned frame
    if look.texture == "noise":  # irregular blotches with about one-pixel edges
        cell = 0.7 * period
        field = _value_noise(rng, across + 2 * size, along + size, cell, 3 * size, balanced=True)
        pattern = np.clip((field - 0.5) * 2 * cell + 0.5, 0.0, 1.0)
        return _colour(rng, look, pattern)
    u, v = along / period + rng.uniform(), across / period + rng.uniform()  # in periods, random phase
    if look.texture == "stripes":
        pattern = _edge(_tri(u), period)
    elif look.texture == "checker":
        pattern = 0.5 + 0.5 * (2.0 * _edge(_tri(u), period) - 1.0) * (2.0 * _edge(_tri(v), period) - 1.0)
    elif look.texture == "dots":
        du, dv = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5
        pattern = np.clip(0.3 * period - np.sqrt(du * du + dv * dv) * period + 0.5, 0.0, 1.0)
    elif look.texture == "waves":
        pattern = _smooth(_tri(u + 0.7 * (_smooth(_tri(v / 2.5)) - 0.5)))
    else:  # grid: dark lines on the light tone
        line_u, line_v = (np.clip(0.09 * period - (1.0 - _tri(w)) * period / 2 + 0.5, 0.0, 1.0) for w in (u, v))
        pattern = 1.0 - np.maximum(line_u, line_v)
    return _colour(rng, look, pattern)


def _colour(rng: np.random.Generator, look: ClassAppearance, pattern: np.ndarray) -> np.ndarray:
    """Blend of the class colour's dark and light tones by ``pattern``, with per-image colour jitter."""
    light = np.array(dict(COLOURS)[look.colour], dtype=float) * (1.0 + rng.uniform(-0.05, 0.05, 3))
    light = light + rng.uniform(-8.0, 8.0)
    dark = light * DARK_TONE
    return dark + pattern[:, None] * (light - dark)


def _tri(w: np.ndarray) -> np.ndarray:
    """Triangle wave: 1 at integers, 0 half-way between."""
    return np.abs(2.0 * (w - np.floor(w)) - 1.0)


def _edge(tri: np.ndarray, period: float) -> np.ndarray:
    """Square wave with a one-pixel ramp."""
    return np.clip((tri - 0.5) * period / 2 + 0.5, 0.0, 1.0)


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def _value_noise(
    rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, cell: float, extent: float, balanced: bool = False
) -> np.ndarray:
    """Smoothly interpolated random grid values in [0, 1] at pixels with 0 <= ys, xs < extent.

    ``balanced``: two of every 2x2 nodes lie above 1/2, so that any patch is about half above.
    """
    nodes = int(extent / cell) + 3
    if balanced:
        blocks = nodes // 2 + 1
        ranks = rng.random((blocks, blocks, 4)).argsort(axis=2, kind="stable").argsort(axis=2, kind="stable")
        values = (ranks + rng.random((blocks, blocks, 4))) / 4
        grid = values.reshape(blocks, blocks, 2, 2).transpose(0, 2, 1, 3).reshape(2 * blocks, 2 * blocks)
    else:
        grid = rng.random((nodes, nodes))
    gy, gx = ys / cell, xs / cell
    iy, ix = np.floor(gy).astype(int), np.floor(gx).astype(int)
    ty, tx = _smooth(gy - iy), _smooth(gx - ix)
    top = grid[iy, ix] + tx * (grid[iy, ix + 1] - grid[iy, ix])
    bottom = grid[iy + 1, ix] + tx * (grid[iy + 1, ix + 1] - grid[iy + 1, ix])
    return top + ty * (bottom - top)


# ------------------------------------------------------------------------------------------- PNGs

_LENGTH_BASES = (3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
                 131, 163, 195, 227, 258)  # fmt: skip
_LENGTH_EXTRA = (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0)
_CODE_LENGTH_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)


def _length_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each match length 0..258: deflate length symbol, its extra bits and their value."""
    symbol, extra_bits, extra_value = (np.zeros(259, dtype=np.int64) for _ in range(3))
    for code, (base, bits) in enumerate(zip(_LENGTH_BASES, _LENGTH_EXTRA)):
        top = base if code == 28 else min(base + (1 << bits) - 1, 257)  # 258 has its own symbol
        for length in range(base, top + 1):
            symbol[length], extra_bits[length], extra_value[length] = 257 + code, bits, length - base
    return symbol, extra_bits, extra_value


_LENGTH_SYMBOL, _LENGTH_EXTRA_BITS, _LENGTH_EXTRA_VALUE = _length_tables()
_POWERS_OF_2 = 2 ** np.arange(40, dtype=np.int64)
_REVERSED_15 = np.array([int(f"{i:015b}"[::-1], 2) for i in range(1 << 15)], dtype=np.int64)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG of an (H, W) grey or (H, W, 3) RGB uint8 array, the same bytes on every machine."""
    height, width = pixels.shape[:2]
    grey = pixels.ndim == 2
    rows = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(height, -1)
    scanlines = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    if grey:  # filter "up": unchanged rows become zeros, long runs for the run-length matches
        scanlines[:, 0] = 2
        scanlines[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=scanlines[1:, 1:])  # uint8 wraps modulo 256, as PNG wants
    else:  # filter "sub": the left neighbour of the same channel
        scanlines[:, 0] = 1
        scanlines[:, 1:4] = rows[:, :3]
        np.subtract(rows[:, 3:], rows[:, :-3], out=scanlines[:, 4:])
    scanlines = scanlines.ravel()
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if grey else 2, 0, 0, 0)
    # labels repeat bytes a lot; noisy images hardly ever, so they are coded as literals only
    stream = b"\x78\x01" + _deflate(scanlines, runs=grey) + struct.pack(">I", zlib.adler32(scanlines.tobytes()))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@dataclass(frozen=True)
class _HuffmanCode:
    """Literal/length code of one deflate block, and the block header that declares it."""

    lengths: np.ndarray
    codes: np.ndarray
    header_values: np.ndarray
    header_bits: np.ndarray


def _huffman_code(counts: list[int]) -> _HuffmanCode:
    lengths = _huffman_lengths(counts, 15)
    used = max(257, max(i for i, n in enumerate(lengths) if n) + 1)
    header_values, header_bits = _block_header(lengths[:used] + [1])  # one distance code, length 1
    return _HuffmanCode(np.array(lengths), np.array(_canonical_codes(lengths)), header_values, header_bits)


def _deflate(data: np.ndarray, runs: bool) -> bytes:
    """One deflate block: with ``runs``, literals and distance-1 matches under a code fitted to them;
    without, literals under the fixed code for filtered image rows (no per-image Huffman work)."""
    if runs:
        symbols, extra_bits, extra_values = _run_symbols(data)
        counts = np.bincount(symbols, minlength=286)
        counts[256] = 1  # end of block
        code = _huffman_code(counts.tolist())
    else:
        symbols, code = data.astype(np.int64), _IMAGE_CODE
    values, bits = code.codes[symbols], code.lengths[symbols]
    if runs:  # one field per symbol: its code, the length's extra bits, then distance code "0" (1 bit)
        values = values + extra_values * _POWERS_OF_2[bits]
        bits = bits + extra_bits + (symbols > 256)
    all_values = np.concatenate([code.header_values, values, code.codes[256:257]])
    all_bits = np.concatenate([code.header_bits, bits, code.lengths[256:257]])
    return _pack_bits(all_values, all_bits)


def _run_symbols(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Literals, except that a byte repeated 3+ times more is coded as distance-1 matches of <= 258.

    Returns the symbols, and the extra bits (count, value) of each match length.
    """
    size = data.size
    starts = np.flatnonzero(np.concatenate([[True], data[1:] != data[:-1]]))
    repeats = np.diff(np.append(starts, size)) - 1
    long_runs = np.flatnonzero(repeats >= 3)
    symbols = data.astype(np.int64)
    extra_bits = np.zeros(size, dtype=np.int64)
    extra_values = np.zeros(size, dtype=np.int64)
    if len(long_runs) == 0:
        return symbols, extra_bits, extra_values
    first, repeat = starts[long_runs] + 1, repeats[long_runs]
    matches = repeat // 258 + (repeat % 258 >= 3)  # a tail under 3 stays literal
    covered = np.minimum(repeat, matches * 258)
    run = np.repeat(np.arange(len(first)), matches)
    index = np.arange(len(run)) - np.repeat(np.cumsum(matches) - matches, matches)
    match_starts = first[run] + 258 * index
    lengths = np.minimum(covered[run] - 258 * index, 258)
    symbols[match_starts] = _LENGTH_SYMBOL[lengths]
    extra_bits[match_starts] = _LENGTH_EXTRA_BITS[lengths]
    extra_values[match_starts] = _LENGTH_EXTRA_VALUE[lengths]
    inside = np.zeros(size + 1, dtype=np.int64)  # +1 where a match's bytes begin, -1 after them
    np.add.at(inside, first, 1)
    np.add.at(inside, first + covered, -1)
    keep = np.cumsum(inside[:size]) == 0
    keep[match_starts] = True
    return symbols[keep], extra_bits[keep], extra_values[keep]


def _block_header(lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """BFINAL, BTYPE=dynamic, and the code lengths (zero runs as symbols 17/18) under their own code."""
    coded: list[tuple[int, int, int]] = []  # code-length symbol, extra value, extra bits
    i = 0
    while i < len(lengths):
        run = 1
        while i + run < len(lengths) and lengths[i + run] == 0 and lengths[i] == 0 and run < 138:
            run += 1
        if lengths[i] == 0 and run >= 11:
            coded.append((18, run - 11, 7))
        elif lengths[i] == 0 and run >= 3:
            coded.append((17, run - 3, 3))
        else:
            run = 1
            coded.append((lengths[i], 0, 0))
        i += run
    cl_lengths = _huffman_lengths(np.bincount([c[0] for c in coded], minlength=19).tolist(), 7)
    cl_codes = _canonical_codes(cl_lengths)
    hclen = max(4, max(j for j, s in enumerate(_CODE_LENGTH_ORDER) if cl_lengths[s]) + 1)
    # BFINAL=1 and BTYPE=2, HLIT (literal/length lengths less 257), HDIST (one distance code), HCLEN
    fields = [(0b101, 3), (len(lengths) - 1 - 257, 5), (0, 5), (hclen - 4, 4)]
    fields += [(cl_lengths[s], 3) for s in _CODE_LENGTH_ORDER[:hclen]]
    for symbol, extra, extra_bits in coded:
        fields += [(cl_codes[symbol], cl_lengths[symbol]), (extra, extra_bits)]
    values, bits = zip(*fields)
    return np.array(values, dtype=np.int64), np.array(bits, dtype=np.int64)


def _huffman_lengths(freqs: list[int], limit: int) -> list[int]:
    """Code length per symbol (0 = unused), no longer than ``limit``; ties broken by node number."""
    while True:
        heap = [(f, i) for i, f in enumerate(freqs) if f]
        if len(heap) == 1:
            return [1 if f else 0 for f in freqs]
        heapq.heapify(heap)
        parent = list(range(len(freqs)))  # leaves are nodes 0..n-1, merges get the next numbers
        while len(heap) > 1:
            weight_a, a = heapq.heappop(heap)
            weight_b, b = heapq.heappop(heap)
            parent[a] = parent[b] = len(parent)
            parent.append(len(parent))
            heapq.heappush(heap, (weight_a + weight_b, len(parent) - 1))
        depth = [0] * len(parent)
        for node in range(len(parent) - 2, len(freqs) - 1, -1):  # parents come after their children
            depth[node] = depth[parent[node]] + 1
        lengths = [depth[parent[i]] + 1 if f else 0 for i, f in enumerate(freqs)]
        if max(lengths) <= limit:
            return lengths
        freqs = [(f + 1) // 2 for f in freqs]  # flatter counts, shorter longest code


def _canonical_codes(lengths: list[int]) -> list[int]:
    """Canonical Huffman codes (RFC 1951, 3.2.2), bit-reversed for LSB-first packing."""
    next_code, code = [0] * 17, 0
    counts = [0] * 17
    for n in lengths:
        counts[n] += 1
    counts[0] = 0
    for n in range(1, 17):
        code = (code + counts[n - 1]) << 1
        next_code[n] = code
    codes = [0] * len(lengths)
    for symbol, n in enumerate(lengths):
        if n:
            codes[symbol] = int(_REVERSED_15[next_code[n]]) >> (15 - n)
            next_code[n] += 1
    return codes


def _pack_bits(values: np.ndarray, bits: np.ndarray) -> bytes:
    """Concatenate bit fields LSB-first, as deflate does (fields of at most 32 bits).

    Shifts are multiplications by powers of two: numpy's shift with per-element amounts is slow.
    """
    offsets = np.cumsum(bits) - bits
    size = int(offsets[-1] + bits[-1] + 7) // 8
    word = offsets // 32
    shifted = values * _POWERS_OF_2[offsets & 31]
    firsts = np.flatnonzero(np.concatenate([[True], word[1:] != word[:-1]]))
    words = np.zeros(size // 4 + 2, dtype=np.int64)
    # fields never overlap, so adding the pieces that land in one 32-bit word is OR-ing them
    words[word[firsts]] += np.add.reduceat(shifted & 0xFFFFFFFF, firsts)
    words[word[firsts] + 1] += np.add.reduceat(shifted // (1 << 32), firsts)
    return words.astype("<u4").tobytes()[:size]


#: Literal code for "sub"-filtered image rows (byte = difference mod 256): small differences are
#: common, large ones rare. Integer weights only, so the table is the same everywhere.
_IMAGE_CODE = _huffman_code([2**20 // (16 + d * d) + 1 for d in (*range(128), *range(-128, 0))] + [1])


# ---------------------------------------------------------------------------------------- preview


def render_preview(dataset_dir: Path, out_png: Path, count: int = 6) -> None:
    """Training images over their colour-coded labels (ignore in black), with a class legend."""
    import cv2

    dataset_dir = Path(dataset_dir)
    names = json.loads((dataset_dir / "classes.json").read_text())["classes"]
    files = sorted((dataset_dir / "images" / "train").glob("*.png"))[:count]
    if not files:
        raise UserError(f"{dataset_dir}: no training images to preview")
    hues = np.array([[[(k * 0.618034 % 1.0) * 180, 200, 235] for k in range(len(names))]], dtype=np.uint8)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(names)] = cv2.cvtColor(hues, cv2.COLOR_HSV2BGR)[0]
    palette[0] = (96, 96, 96)
    tile, gap = 128, 4
    images, labels = [], []
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        label = cv2.imread(str(dataset_dir / "labels" / "train" / path.name), cv2.IMREAD_UNCHANGED)
        if image is None or label is None:
            raise UserError(f"{path}: image or its label cannot be read; regenerate the dataset")
        images.append(cv2.resize(image, (tile, tile), interpolation=cv2.INTER_NEAREST))
        labels.append(cv2.resize(palette[label], (tile, tile), interpolation=cv2.INTER_NEAREST))
    width = len(files) * (tile + gap) + gap
    columns = max(1, width // 190)
    legend_rows = -(-len(names) // columns)
    canvas = np.full((2 * tile + 3 * gap + legend_rows * 16 + gap, width, 3), 255, dtype=np.uint8)
    for i, (image, label) in enumerate(zip(images, labels)):
        x = gap + i * (tile + gap)
        canvas[gap : gap + tile, x : x + tile] = image
        canvas[2 * gap + tile : 2 * gap + 2 * tile, x : x + tile] = label
    for k, name in enumerate(names):
        x = gap + (k % columns) * 190
        y = 3 * gap + 2 * tile + (k // columns) * 16
        cv2.rectangle(canvas, (x, y + 2), (x + 11, y + 13), tuple(int(c) for c in palette[k]), -1)
        cv2.putText(canvas, f"{k} {name}", (x + 16, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_png), canvas):
        raise UserError(f"{out_png}: cannot write the preview image")
