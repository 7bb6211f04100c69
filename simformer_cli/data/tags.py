"""Image-level tags for the classes a user adds without masks (``split --tags FILE``).

Two file forms, both naming every image of the training set:

* CSV with a header: ``image,labels`` (one row per image, class names separated by ``;``, empty
  when the image shows no tagged class) or ``image,label`` (one row per image and class; a row with
  an empty label says the image shows no tagged class);
* JSON: an object ``{"image": ["class", ...], ...}``.

An image is named by its name (the file's stem), its file name, or ``SUBSET/NAME`` where train and
val share a name. A tag list is complete: an image without a tag for a class does not show it, and
training relies on that. So a training image with no row at all is refused rather than read as "no
tagged class": a forgotten row is far more common than a deliberate one and would teach the model
that the class is absent. The classes named anywhere in the file are the novel classes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from simformer_cli.artifacts.digest import file_digest
from simformer_cli.data.source import DecodedSample, RawDataset, Sample
from simformer_cli.errors import DataError, UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
HEADERS = {("image", "labels"): "list", ("image", "label"): "pairs"}


@dataclass(frozen=True)
class TagFile:
    """A parsed tag file: image key -> class names as written, and the file's sha256."""

    path: Path
    digest: str
    rows: dict[str, tuple[str, ...]]


def _fail(path: Path, problem: str, fix: str) -> DataError:
    return DataError(path, problem, fix)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"--tags {path}: file not found; pass a CSV (image,labels) or JSON (image -> [classes]) file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise _fail(path, "not UTF-8 text", "save the tag file as UTF-8 CSV or JSON") from None


def _split_names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(";") if name.strip())


def _parse_csv(path: Path, text: str) -> dict[str, tuple[str, ...]]:
    table = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    header = tuple(cell.strip().lower() for cell in table[0])
    form = HEADERS.get(header)
    if form is None:
        raise _fail(path, f"CSV header {','.join(table[0])!r} is not understood",
                    "start the file with 'image,labels' (classes separated by ';') or 'image,label' (one row per pair)")
    rows: dict[str, list[str]] = {}
    for line, row in enumerate(table[1:], start=2):
        if len(row) > 2 or not row[0].strip():
            raise _fail(path, f"line {line} has {len(row)} cells or no image name",
                        f"write one '{header[0]},{header[1]}' pair per line (quote names holding commas)")
        image, names = row[0].strip(), _split_names(row[1] if len(row) > 1 else "")
        if form == "list":
            if image in rows:
                raise _fail(path, f"image {image!r} is listed twice (line {line})", "give each image one row")
            rows[image] = list(names)
            continue
        listed = rows.setdefault(image, [])
        if len(names) > 1:
            raise _fail(path, f"line {line} names several classes in the one-pair-per-row form",
                        "write one row per class, or use the header 'image,labels'")
        if names and names[0] in listed:
            raise _fail(path, f"image {image!r} is tagged {names[0]!r} twice (line {line})", "keep one row per pair")
        listed.extend(names)
    return {image: tuple(names) for image, names in rows.items()}


def _parse_json(path: Path, text: str) -> dict[str, tuple[str, ...]]:
    def no_repeats(pairs: list[tuple[str, object]]) -> dict[str, object]:
        keys = [key for key, _ in pairs]
        twice = sorted({key for key in keys if keys.count(key) > 1})
        if twice:
            raise _fail(path, f"image {twice[0]!r} is listed twice", "give each image one entry")
        return dict(pairs)

    try:
        document = json.loads(text, object_pairs_hook=no_repeats)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"not valid JSON ({exc})", "write an object mapping image names to lists of class names") from None
    if not isinstance(document, dict):
        raise _fail(path, "expected a JSON object mapping image names to lists of class names",
                    'e.g. {"img001.jpg": ["car", "person"], "img002.jpg": []}')
    rows: dict[str, tuple[str, ...]] = {}
    for image, names in document.items():
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise _fail(path, f"the entry of {image!r} is not a list of class names", 'write e.g. "img001.jpg": ["car"]')
        rows[image.strip()] = tuple(n.strip() for n in names)
    return rows


def read_tags(path: Path) -> TagFile:
    """Parse a tag file (JSON when it ends in ``.json``, CSV otherwise); refuse an empty one."""
    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise _fail(path, "the tag file is empty", "list every training image with its tagged classes")
    rows = _parse_json(path, text) if path.suffix.lower() == ".json" else _parse_csv(path, text)
    if not rows:
        raise _fail(path, "the tag file lists no image", "list every training image with its tagged classes")
    return TagFile(path=path, digest=file_digest(path), rows=rows)


def _image_key(key: str) -> tuple[str | None, str]:
    """``[SUBSET/]NAME[.ext]`` -> (subset or None, name)."""
    subset, _, name = key.rpartition("/")
    stem, dot, suffix = name.rpartition(".")
    if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES:
        name = stem
    return (subset or None), name


@dataclass(frozen=True)
class TaggedSample:
    """A sample whose mask holds the base classes only, with the novel classes it shows as tags."""

    inner: Sample
    tags: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.inner.name

    def files(self) -> tuple[str, ...]:
        return self.inner.files()

    def decode(self, root: Path, lut, ignore_index: int) -> DecodedSample:  # noqa: ANN001 - as Sample
        return dataclasses.replace(self.inner.decode(root, lut, ignore_index), tags=self.tags)


def _resolve(tags: TagFile, raw: RawDataset, subsets: Sequence[str]) -> dict[tuple[str, str], tuple[str, ...]]:
    """Map every row to (subset, image name); refuse unknown or ambiguous images."""
    where: dict[str, list[str]] = {}
    for subset in subsets:
        for sample in raw.subsets[subset]:
            where.setdefault(sample.name, []).append(subset)
    resolved: dict[tuple[str, str], tuple[str, ...]] = {}
    for key, names in tags.rows.items():
        subset, name = _image_key(key)
        found = where.get(name, [])
        if subset is not None:
            found = [s for s in found if s == subset]
        if not found:
            raise _fail(tags.path, f"row for image {key!r}: no such image in the dataset",
                        "remove the row or check the image name (file name or stem)")
        if len(found) > 1:
            raise _fail(tags.path, f"image {key!r} is in both {' and '.join(found)}",
                        f"write {found[0]}/{name} or {found[1]}/{name}")
        if (found[0], name) in resolved:
            raise _fail(tags.path, f"image {key!r} is listed twice (under two spellings)", "give each image one row")
        resolved[(found[0], name)] = names
    return resolved


def tagged_novel_classes(tags: TagFile, raw: RawDataset) -> tuple[int, ...]:
    """Class ids the tag file names: the novel classes. Unknown names are refused."""
    index = {name.lower(): i for i, name in enumerate(raw.class_names)}
    named: set[int] = set()
    for key, names in tags.rows.items():
        for name in names:
            if name.lower() not in index:
                close = [n for n in raw.class_names if name.lower() in n.lower() or n.lower() in name.lower()][:3]
                hint = f"did you mean {', '.join(close)}?" if close else "add it to the dataset's class list"
                raise _fail(tags.path, f"image {key!r} is tagged with unknown class {name!r}", hint)
            named.add(index[name.lower()])
    if not named:
        raise _fail(tags.path, "no image is tagged with any class, so there is no novel class",
                    "tag the images with the classes you add")
    if len(named) == raw.num_classes:
        raise _fail(tags.path, "every class is tagged, so none is left with masks (base)",
                    "tag only the classes you add; the others come from the masks")
    return tuple(sorted(named))


def apply_tags(raw: RawDataset, tags: TagFile) -> tuple[RawDataset, tuple[int, ...], dict[str, str]]:
    """The dataset with its tagged samples wrapped, the novel classes, and each subset's label
    coverage: ``base`` (masks of base classes, novel classes from tags), ``full`` (masks of every
    class, no tag rows) or ``none`` (no masks and no tags).

    Every training image needs a row (see the module docstring); another subset is tagged
    completely or not at all, since its masks then either hold every class or only the base ones.
    """
    novel = tagged_novel_classes(tags, raw)
    both = sorted(set(novel) & (raw.masked_classes or frozenset()))
    if both:
        masks = raw.label_files.get("annotations", raw.root)
        raise _fail(tags.path, f"class {raw.class_names[both[0]]!r} is tagged but has masks in {masks}; a class has "
                               "either masks (base) or tags (novel), never both",
                    "remove its tags, or its annotations")
    index = {name.lower(): i for i, name in enumerate(raw.class_names)}
    subsets = [s for s in ("train", "val", "test", "holdout") if s in raw.subsets]
    resolved = _resolve(tags, raw, subsets)
    wrapped: dict[str, tuple[Sample, ...]] = {}
    coverage: dict[str, str] = {}
    for subset in subsets:
        samples = raw.subsets[subset]
        missing = [s.name for s in samples if (subset, s.name) not in resolved]
        if subset in ("train", "holdout") or len(missing) < len(samples):
            if missing:
                raise _fail(tags.path, f"{subset} image {missing[0]!r} has no row ({len(missing)} of {len(samples)} "
                                       f"{subset} images lack one) and a tag list must be complete",
                            f"add a row with no classes for an image without tagged classes "
                            f"('{missing[0]},' in CSV, \"{missing[0]}\": [] in JSON)")
            wrapped[subset] = tuple(
                TaggedSample(s, tuple(sorted({index[n.lower()] for n in resolved[(subset, s.name)]}))) for s in samples)
            coverage[subset] = "base"
        else:
            wrapped[subset] = samples
            coverage[subset] = "none" if subset in raw.unmasked_subsets else "full"
    return dataclasses.replace(raw, subsets=wrapped), novel, coverage
