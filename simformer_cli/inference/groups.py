"""Naming novel pixels by groups (``pseudolabel --among groups``).

When novel classes appear together in nearly every image (street scenes: car, tree, pedestrian),
a pixel's own scores say little about which of its image's novel classes it is. Whole groups of
alike pixels say more. The pixels without base ground truth ("open" pixels) of every training
image are grouped by k-means on the model's mask features (unit length, cosine distance), and
each group is named by counting images: in how many images that lack class n does the group
still appear? A group of class n appears there only by stray pixels; a group of another class
appears there about as often as in the images that have n. The log-likelihood ratio of the two
(``group_evidence``) is the group's evidence for n, and an open pixel takes the class of its
image's label with the most evidence for its group (its score breaks ties).

Images, not pixels, are the counts: the pixels of one image are far from independent. Both
feature passes run the network once per training image at scale 1 without flipping; the group
of every open grid cell is kept in memory (one byte per stride-4 cell).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from simformer_cli.artifacts.split import SplitArtifact
from simformer_cli.devices import Runtime
from simformer_cli.errors import UserError
from simformer_cli.inference.predict import padded_view, same_size_batches
from simformer_cli.model import MaskFormer
from simformer_cli.progress import Reporter
from simformer_cli.settings.choices import APPEARS, GROUPS
from simformer_cli.settings.test_time import TestTimeSettings

#: The rate at which a group of class n still appears in images whose label lacks n (stray pixels).
STRAY = 0.02
#: Open-pixel features the k-means sees: at most this many per image and in all, and its rounds.
POOL_PER_IMAGE, POOL_MAX, KMEANS_ROUNDS = 256, 100_000, 30
#: Training images that share one forward pass of the feature passes.
FEATURE_BATCH = 8


@dataclass
class GroupNaming:
    """The k-means groups of one split's open pixels and each group's evidence for each novel class.

    ``maps[i]``: the group of each stride-4 cell of training image i (uint8; cells of the padded
    view cropped away); ``evidence``: (groups, novel classes); ``share``: each group's share of all
    open cells."""

    novel_classes: list[int]
    maps: list[np.ndarray]
    evidence: np.ndarray
    share: np.ndarray
    seen_in: np.ndarray = field(repr=False)  # (groups,) images each group appears in

    def pixel_evidence(self, index: int, classes: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """(len(classes), H, W): the evidence of each pixel's group for each of ``classes``."""
        columns = [self.novel_classes.index(int(c)) for c in classes]
        grid = torch.from_numpy(self.maps[index].astype(np.int64))
        table = torch.from_numpy(self.evidence[:, columns].T.astype(np.float32))  # (classes, groups)
        cells = F.interpolate(grid[None, None].float(), size=size, mode="nearest")[0, 0].long()
        return table[:, cells]

    def named(self) -> list[int]:
        """The novel class each group's evidence favours most."""
        return [self.novel_classes[k] for k in self.evidence.argmax(1)]


@torch.no_grad()
def feature_grids(model: MaskFormer, images: Sequence[np.ndarray], test_time: TestTimeSettings,
                  runtime: Runtime) -> list[torch.Tensor]:
    """(C, h, w) unit-length mask features (float32, on the CPU) of each image's scale-1 view, on
    the stride-4 grid, the padding's cells cropped; images of one size share a forward pass
    (``same_size_batches``)."""
    results: list[torch.Tensor | None] = [None] * len(images)
    for positions, tensor in same_size_batches(images, runtime.device, FEATURE_BATCH):
        batch, (vh, vw) = padded_view(tensor, test_time, 1.0)
        dtype = runtime.autocast_dtype
        with torch.autocast(device_type=runtime.device.type, dtype=dtype, enabled=dtype is not None):
            grids = model(batch)["mask_features"]
        grids = F.normalize(grids[:, :, : -(-vh // 4), : -(-vw // 4)].float(), dim=1).cpu()
        for position, grid in zip(positions, grids):
            results[position] = grid
    return results  # type: ignore[return-value]


def label_on_grid(label: np.ndarray, grid_size: tuple[int, int]) -> torch.Tensor:
    """(h, w) int64: the label of each grid cell's nearest label pixel."""
    small = F.interpolate(torch.from_numpy(label.astype(np.float32))[None, None], size=grid_size, mode="nearest")
    return small[0, 0].long()


def open_cells(label: np.ndarray, ignore: int, grid_size: tuple[int, int]) -> torch.Tensor:
    """(h, w) bool: the grid cells whose nearest label pixel has no base ground truth."""
    return label_on_grid(label, grid_size) == ignore


def kmeans(pool: torch.Tensor, clusters: int, rounds: int = KMEANS_ROUNDS, seed: int = 0) -> torch.Tensor:
    """(clusters, C) unit centres of spherical k-means (cosine) on the unit rows of ``pool``,
    started from distinct rows drawn with ``seed``; a centre left without members keeps its place."""
    generator = torch.Generator().manual_seed(seed)
    centers = pool[torch.randperm(len(pool), generator=generator)[:clusters]].clone()
    for _ in range(rounds):
        nearest = (pool @ centers.T).argmax(1)
        sums = torch.zeros_like(centers).index_add_(0, nearest, pool)
        filled = torch.bincount(nearest, minlength=len(centers)) > 0
        centers[filled] = F.normalize(sums[filled], dim=1)
    return centers


def appearances(mass: np.ndarray, appears: float) -> np.ndarray:
    """(groups, images) bool: a group appears in an image where it holds at least ``appears`` of
    the image's open cells. ``mass``: (groups, images) open cells of each group in each image."""
    return mass >= appears * np.maximum(mass.sum(0), 1)


def group_evidence(seen: np.ndarray, present: np.ndarray, stray: float = STRAY) -> np.ndarray:
    """(groups, classes): the log-likelihood ratio, counted in images, of "group k is class n"
    against "k is another class". Were k of class n, it would appear in the images lacking n only
    at the rate ``stray``; were it not, as often as in the images that have n. ``seen``: (groups,
    images) appearances; ``present``: (images, classes) image-level labels. A class that every
    image (or none) has gets 0 for every group: the counts cannot tell."""
    evidence = np.zeros((len(seen), present.shape[1]))
    for n in range(present.shape[1]):
        lacking, having = ~present[:, n], present[:, n]
        if not lacking.any() or not having.any():
            continue
        rate = np.clip(seen[:, having].mean(1), stray, 1 - stray)
        hits, misses = seen[:, lacking].sum(1), (~seen[:, lacking]).sum(1)
        evidence[:, n] = hits * np.log(stray / rate) + misses * np.log((1 - stray) / (1 - rate))
    return evidence


def name_groups(split: SplitArtifact, model: MaskFormer, test_time: TestTimeSettings, runtime: Runtime,
                reporter: Reporter, groups: int = GROUPS, appears: float = APPEARS) -> GroupNaming:
    """Group the open pixels of every training image and name the groups (see the module)."""
    manifest = split.manifest
    novel = [int(c) for c in manifest.novel_classes]
    count, ignore = split.count("train"), manifest.ignore_index
    per_image = max(1, min(POOL_PER_IMAGE, POOL_MAX // max(count, 1)))
    model.eval()

    def grids_of(description: str):  # noqa: ANN202
        with reporter.task(description, count) as advance:
            for start in range(0, count, FEATURE_BATCH):
                indices = range(start, min(count, start + FEATURE_BATCH))
                grids = feature_grids(model, [split.image("train", i) for i in indices], test_time, runtime)
                for index, grid in zip(indices, grids):
                    yield index, grid, open_cells(split.label("train", index), ignore, grid.shape[1:])
                advance(len(indices))

    pool = []
    for _, grid, cells in grids_of("gathering open-pixel features"):
        values = grid[:, cells].T
        pool.append(values[:: max(1, -(-len(values) // per_image))])
    pooled = torch.cat(pool) if pool else torch.zeros(0, 1)
    if len(pooled) < groups:
        raise UserError(f"--groups {groups}: the training images have only {len(pooled)} feature cells without base "
                        "ground truth; use fewer groups or --among image")
    centers = kmeans(pooled, groups)
    maps, mass = [], np.zeros((groups, count))
    for index, grid, cells in grids_of("grouping open pixels"):
        group = (grid.flatten(1).T @ centers.T).argmax(1).reshape(grid.shape[1:])
        maps.append(group.numpy().astype(np.uint8))
        mass[:, index] = np.bincount(group[cells].numpy(), minlength=groups)
    found = mass.sum(0) > 0  # only images with open pixels can tell anything
    seen = appearances(mass[:, found], appears)
    evidence = group_evidence(seen, split.image_labels("train")[found][:, novel])
    return GroupNaming(novel_classes=novel, maps=maps, evidence=evidence,
                       share=mass.sum(1) / max(mass.sum(), 1), seen_in=seen.sum(1))


def describe_naming(naming: GroupNaming, class_names: Sequence[str], reporter: Reporter) -> None:
    """One line per group, largest first: its share of the open pixels, the images it appears in
    and the class it is named after, with its evidence for each novel class."""
    named = naming.named()
    for k in np.argsort(-naming.share):
        evidence = ", ".join(f"{class_names[c]} {e:+.0f}" for c, e in zip(naming.novel_classes, naming.evidence[k]))
        reporter.info(f"group {k}: {naming.share[k]:.1%} of the open pixels, appears in {naming.seen_in[k]} images; "
                      f"most like {class_names[named[k]]} (evidence {evidence})")
