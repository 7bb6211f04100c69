"""Choosing a partner image for pixel-pixel similarity transfer (the "Deconf" rule, fixed).

SimFormer trains on image pairs so that the similarity net can compare pixels across images. For an
anchor image with novel classes S (from its image-level label), a novel class n of S is chosen
(usually uniformly, with a small probability the rarest one) and the partner is drawn from the
images whose novel classes meet S in exactly {n}: the pair then shares one novel class and no
other, so "similar across the pair" on non-base pixels means "n". Unlike the released code, an
anchor with a single novel class gets such a partner too (the released code gave it none), and an
anchor without novel classes gets a partner sharing a base class. Only image-level labels are read.
"""

from __future__ import annotations

import numpy as np

RAREST_PROBABILITY = 0.01


class PartnerSampler:
    """Partner choice from image-level labels ``(N, K)`` and the split's novel class ids."""

    def __init__(self, image_labels: np.ndarray, novel_classes: list[int], base_classes: list[int]) -> None:
        self.novel = np.asarray(image_labels[:, novel_classes], dtype=bool)  # (N, |novel|)
        self.base = np.asarray(image_labels[:, base_classes], dtype=bool)  # (N, |base|)
        self.count = len(image_labels)
        self._with_novel = [np.flatnonzero(self.novel[:, j]) for j in range(self.novel.shape[1])]
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def candidates(self, anchor: int, novel_column: int) -> np.ndarray:
        """Images other than ``anchor`` whose novel classes meet the anchor's in exactly this one."""
        key = (anchor, novel_column)
        if key not in self._cache:
            others = self.novel[anchor].copy()
            others[novel_column] = False
            pool = self._with_novel[novel_column]
            clash = self.novel[pool][:, others].any(axis=1)
            pool = pool[~clash]
            self._cache[key] = pool[pool != anchor]
        return self._cache[key]

    def partner(self, anchor: int, rng: np.random.Generator) -> int:
        columns = np.flatnonzero(self.novel[anchor])
        if len(columns):
            if rng.random() < RAREST_PROBABILITY:
                sizes = [len(self.candidates(anchor, c)) for c in columns]
                column = int(columns[int(np.argmin(sizes))])
            else:
                column = int(rng.choice(columns))
            pool = self.candidates(anchor, column)
            if len(pool) == 0:  # nobody shares exactly this class: any image that has it
                pool = self._with_novel[column][self._with_novel[column] != anchor]
            if len(pool):
                return int(rng.choice(pool))
        shares_base = np.flatnonzero(self.base[:, self.base[anchor]].any(axis=1))
        shares_base = shares_base[shares_base != anchor]
        if len(shares_base):
            return int(rng.choice(shares_base))
        return anchor
