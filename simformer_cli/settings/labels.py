"""How a label map encodes classes: ids 0..K-1 and one ignore value, in the narrowest dtype."""

from __future__ import annotations

import numpy as np


def ignore_index_for(num_classes: int) -> int:
    """Ignore value of a label map: 255 while the classes fit in uint8, else 65535."""
    return 255 if num_classes < 255 else 65535


def label_dtype_for(num_classes: int) -> np.dtype:
    return np.dtype(np.uint8) if num_classes < 255 else np.dtype(np.uint16)
