"""How image-like arrays are stored in every artifact: padded to the largest image, chunked per
image, sharded by whole groups of images; and how whole files (a split's JPEG or PNG images) are.

Chunks are one image by at most 256x256 pixels; shards hold whole groups of images along the first
axis, so one writer owns a shard and padding chunks (all fill value) are never stored. Every chunk
ends in a crc32c of its compressed bytes, checked on every read (a shard's index has its own).
Files are kept in a one-dimensional array of variable-length bytes, one file per chunk, sharded and
checked the same way, not compressed again.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.dtype import VariableLengthBytes
from zarr.errors import UnstableSpecificationWarning

from simformer_cli.artifacts.inventory import read_stored

CHUNK_EDGE = 256
SHARD_TARGET_BYTES = 32 << 20
MAX_SHARD_IMAGES = 64
COMPRESSORS = (ZstdCodec(level=3), Crc32cCodec())  # the crc makes damaged bytes fail to decode
#: zarr's name for variable-length bytes, the data type of an array of files (numpy has no name for it).
FILES_DTYPE = "variable_length_bytes"


@dataclass(frozen=True)
class SubsetLayout:
    """Where the images of one subset go: padded canvas, chunk edge, images per shard."""

    subset: str
    count: int
    canvas: tuple[int, int]
    chunk: tuple[int, int]
    shard_images: int

    def shard_ranges(self) -> list[range]:
        step = self.shard_images
        return [range(start, min(start + step, self.count)) for start in range(0, self.count, step)]


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def plan_layout(subset: str, sizes: np.ndarray) -> SubsetLayout:
    """Pick canvas, chunk and shard sizes from the (N, 2) image sizes of a subset."""
    max_h, max_w = (int(v) for v in sizes.max(axis=0))
    chunk = (min(CHUNK_EDGE, max_h), min(CHUNK_EDGE, max_w))
    canvas = (_round_up(max_h, chunk[0]), _round_up(max_w, chunk[1]))
    typical = float(np.median(sizes[:, 0].astype(np.float64) * sizes[:, 1])) * 3
    per_shard = int(np.clip(SHARD_TARGET_BYTES // max(typical, 1.0), 1, MAX_SHARD_IMAGES))
    per_shard = 1 << (per_shard.bit_length() - 1)  # a power of two keeps shard files evenly sized
    return SubsetLayout(subset, len(sizes), canvas, chunk, per_shard)


def write_shard_block(array: zarr.Array, start: int, items: list[np.ndarray], fill: int) -> None:
    """Write consecutive images (whole shard) at once, padded to the block's largest size."""
    height = max(item.shape[0] for item in items)
    width = max(item.shape[1] for item in items)
    ch, cw = array.chunks[1], array.chunks[2]
    height = min(_round_up(height, ch), array.shape[1])
    width = min(_round_up(width, cw), array.shape[2])
    block = np.full((len(items), height, width, *items[0].shape[2:]), fill, dtype=array.dtype)
    for k, item in enumerate(items):
        block[k, : item.shape[0], : item.shape[1]] = item
    array[start : start + len(items), :height, :width] = block


def read_cut(array: zarr.Array, start: int, sizes: np.ndarray) -> list[np.ndarray]:
    """Items ``start..start+len(sizes)-1`` of a padded (N, H, W[, C]) array in one read, each cut
    to its (height, width) in ``sizes`` (copies, so the padded block is not kept alive)."""
    height, width = (int(v) for v in sizes.max(axis=0))
    block = read_stored(array, (slice(start, start + len(sizes)), slice(0, height), slice(0, width)))
    return [block[n, :h, :w].copy() for n, (h, w) in enumerate(sizes)]


def dtype_name(array: zarr.Array) -> str:
    """The data type of an array as a manifest records it: numpy's name, or :data:`FILES_DTYPE`."""
    return FILES_DTYPE if isinstance(array.metadata.data_type, VariableLengthBytes) else str(array.dtype)


def create_files_array(group: zarr.Group, name: str, count: int, per_shard: int) -> None:
    """An array of ``count`` files, one per chunk, ``per_shard`` to a shard (as the images' labels are)."""
    with warnings.catch_warnings():
        # zarr warns that variable-length bytes have no v3 specification yet; simformer reads its own
        warnings.simplefilter("ignore", UnstableSpecificationWarning)
        group.create_array(name=name, shape=(count,), chunks=(1,), shards=(per_shard,) if per_shard != count else None,
                           dtype=VariableLengthBytes(), fill_value=b"",
                           compressors=(Crc32cCodec(),))  # JPEG and PNG are compressed already


def write_files(array: zarr.Array, start: int, files: Sequence[bytes]) -> None:
    """Store consecutive files (whole shards at once, as the one writer of a shard must)."""
    values = np.empty(len(files), dtype=object)
    for k, data in enumerate(files):
        values[k] = data
    array[start : start + len(files)] = values


def read_files(array: zarr.Array, start: int, stop: int) -> list[bytes]:
    """Files ``start..stop-1`` as Python bytes, in one read."""
    # a slice, never an index: zarr returns a single element as numpy bytes, which drops trailing NULs
    return list(read_stored(array, slice(start, stop)))
