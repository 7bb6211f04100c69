"""The one decoder of image files, and what a split needs to keep JPEG images as their files.

The split ingest validates every image by decoding its file here and keeps a JPEG's bytes as they
are; every reader of the split decodes them here again, so the pixels a reader gets are the ones
validated at ingest, and the artifact is about the size of the source. Beside the bytes the split
keeps the crc32 of the decoded pixels (:func:`pixels_crc32`), so that a decoder that gives other
pixels (another Pillow or libjpeg build) is refused instead of silently changing what is trained on.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from simformer_cli.errors import DataError

Image.MAX_IMAGE_PIXELS = 20_000 * 20_000  # large aerial tiles are fine; zip bombs are not

#: PIL modes of single-channel images with more than 8 bits per pixel (16-bit grey PNGs open as
#: ``I;16``; older Pillow versions open them as ``I``).
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ORIENTATION_TAG = 0x0112
#: EXIF orientations that turn the picture by a quarter: width and height trade places.
QUARTER_TURNS = (5, 6, 7, 8)


def exif_orientation(im: Image.Image) -> int:
    """EXIF orientation (2-8) of an opened image, 1 when there is none; read without decoding pixels.

    Phones store a portrait photo as landscape pixels plus this tag. The scan (image sizes) and the
    decode both ask here, so they always agree. A PNG's EXIF counts when it comes before the pixel
    data (an ``eXIf`` chunk before ``IDAT``, as the PNG specification asks); an unreadable EXIF
    block is ignored, as image viewers do.
    """
    if isinstance(im, PngImagePlugin.PngImageFile) and "exif" not in im.info:
        return 1  # Pillow would decode the whole PNG to look for a late eXIf chunk
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - any malformed EXIF: the pixels are still good
        return 1
    return orientation if isinstance(orientation, int) and 2 <= orientation <= 8 else 1


def displayed_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as it is displayed, i.e. after its EXIF orientation."""
    width, height = im.size
    return (height, width) if exif_orientation(im) in QUARTER_TURNS else (width, height)


def decode_image(path: Path, data: bytes) -> np.ndarray:
    """Decode an RGB image strictly: a truncated or corrupt file is an error, never a grey patch."""
    return decode_image_oriented(path, data)[0]


def decode_image_oriented(path: Path, data: bytes) -> tuple[np.ndarray, int]:
    """The image as displayed, (H, W, 3) uint8 RGB, and the EXIF orientation that was applied.

    The EXIF orientation is applied (a phone photo comes out upright, as viewers show it). 16-bit
    greyscale keeps its top 8 bits (as Pillow already does for 16-bit colour PNGs) instead of being
    clipped to 255, which would make it nearly white.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            orientation = exif_orientation(im)
            im.load()
            oriented = ImageOps.exif_transpose(im) if orientation != 1 else im
            if oriented.mode in WIDE_GREY_MODES:
                values = np.asarray(oriented).astype(np.int64)
                grey = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
                array = np.repeat(grey[:, :, None], 3, axis=2) if grey.ndim == 2 else grey
            else:
                rgb = oriented if oriented.mode == "RGB" else oriented.convert("RGB")  # no copy where none is needed
                array = np.asarray(rgb, dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise DataError(path, f"image is too large to read safely ({str(exc).split(',')[0]})", "resize it or remove it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"not a readable image ({exc})", "re-download or delete the file") from None
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(path, f"image has unusable shape {array.shape}")
    return array, orientation


def is_jpeg(data: bytes) -> bool:
    """Whether a file's bytes are a JPEG (its start-of-image marker, whatever the file's name)."""
    return data[:3] == b"\xff\xd8\xff"


def pixels_crc32(image: np.ndarray) -> int:
    """crc32 of an image's pixel bytes (row-major), what a decode must reproduce."""
    return zlib.crc32(np.ascontiguousarray(image).data)
