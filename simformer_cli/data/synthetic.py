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
import json
import math
import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from simformer_cli.data.png import encode_png
from simformer_cli.errors import UserError
from simformer_cli.settings.synthetic import SyntheticSettings

#: Bump whenever the bytes written for some settings change.
GENERATOR_VERSION = 4  # 4: a test subset
IGNORE_INDEX = 255
SUBSETS = ("train", "val", "test")

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
SCALES = (("coarse", 12.0), ("fine", 5.5))
PIXEL_NOISE = 6  # uniform integer noise per pixel and channel, +-

#: Unit vectors at whole degrees, rounded so that libm differences in the last bit cannot leak.
DIRECTIONS = np.array(
    [(round(math.cos(math.radians(d)), 9), round(math.sin(math.radians(d)), 9)) for d in range(360)]
)


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
    for subset, count in zip(SUBSETS, (settings.train_images, settings.val_images, settings.test_images)):
        if count:  # no test folder at all when test_images is 0
            (out_dir / "images" / subset).mkdir(parents=True, exist_ok=True)
            (out_dir / "labels" / subset).mkdir(parents=True, exist_ok=True)
    chunks = list(_chunks(settings))
    done = 0
    if workers > 0 and len(chunks) > 1:
        # Spawned, never forked: a fork copies the locks other threads of the caller hold (a
        # progress display's refresh thread, say), and a worker that needs one waits forever.
        with multiprocessing.get_context("spawn").Pool(min(workers, len(chunks)), _keep_freed_memory) as pool:
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
    # A novel background would make every image's unknown region the same class: keep it base.
    classes = {"classes": [a.name for a in appearances], "ignore_index": IGNORE_INDEX, "always_base": ["background"]}
    (out_dir / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")


def parse_presence(text: str, num_classes: int = 16) -> dict[int, float]:
    """``CLASS=SHARE,...`` (a class by id or name, a share of images between 0 and 1) -> class_presence."""
    names = [appearance.name for appearance in class_appearances(num_classes)]
    presence: dict[int, float] = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        key, sep, value = item.partition("=")
        key = key.strip()
        class_id = int(key) if key.isdigit() else names.index(key) if key in names else None
        try:
            share = float(value)
        except ValueError:
            share = float("nan")
        if not sep or class_id is None or not 0.0 <= share <= 1.0:
            raise UserError(f"--synthetic-presence {item!r}: expected CLASS=SHARE with a class id or name and a "
                            "share of images between 0 and 1, e.g. 3=0.92,green-dots-fine=0.87")
        presence[class_id] = share
    return presence


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
    for subset_index, count in enumerate((settings.train_images, settings.val_images, settings.test_images)):
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
    if settings.class_presence:
        classes = _classes_with_presence(rng, settings, count)
    else:
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


def _classes_with_presence(rng: np.random.Generator, settings: SyntheticSettings, count: int) -> np.ndarray:
    """The regions' classes when some classes have a set presence: each listed class by its own coin
    flip, then unlisted classes up to ``count`` regions, all in random order (later ones occlude)."""
    listed = sorted(settings.class_presence)
    flips = rng.random(len(listed))
    chosen = [c for c, flip in zip(listed, flips) if flip < settings.class_presence[c]]
    pool = np.array([c for c in range(1, settings.num_classes) if c not in settings.class_presence])
    rest = max(0, count - len(chosen))
    chosen += rng.choice(pool, size=rest, replace=rest > len(pool)).tolist()
    return rng.permutation(np.array(chosen, dtype=np.int64))


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
    if look.texture == "noise":  # irregular blotches with about one-pixel edges, at half contrast
        cell = 0.7 * period
        field = _value_noise(rng, across + 2 * size, along + size, cell, 3 * size, balanced=True)
        pattern = 0.25 + 0.5 * np.clip((field - 0.5) * 2 * cell + 0.5, 0.0, 1.0)
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
