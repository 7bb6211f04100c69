"""The pixel-pixel similarity net: does pixel i of one image show the same class as pixel j of another?

Method reference section 4.5.4. The official net runs 1x1 convolutions over a (2C, K, K) grid of
concatenated feature pairs; a 1x1 convolution over such a grid is a linear layer applied to each
pair, and BatchNorm2d over it normalises over all pairs, so this module uses Linear and BatchNorm1d on
the flat batch of pairs: the same function. The first layer is applied to each point once and
broadcast over the pairs, which is what makes 100 x 100 pairs per image pair cheap.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class _ResidualBlock(nn.Module):
    """ReLU(BN(Linear)) twice, plus a residual: identity, or ReLU(Linear) when projecting."""

    def __init__(self, in_dim: int, out_dim: int, project: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.bn1 = nn.BatchNorm1d(out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)
        self.bn2 = nn.BatchNorm1d(out_dim)
        self.shortcut = nn.Linear(in_dim, out_dim) if project else None

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_dim) -> (N, out_dim)."""
        return self.finish(self.fc1(x), x if self.shortcut is None else self.shortcut(x))

    def finish(self, inner: Tensor, skip: Tensor) -> Tensor:
        """The block after its input projections: inner = fc1(x), skip = shortcut(x) or x."""
        # In-place ReLUs are safe after BatchNorm (its backward needs its input, not its output).
        out = F.relu(self.bn2(self.fc2(F.relu(self.bn1(inner), inplace=True))), inplace=True)
        return out + (F.relu(skip) if self.shortcut is not None else skip)


def _pairwise_linear(layer: nn.Linear, first: Tensor, second: Tensor) -> Tensor:
    """layer([f_i; f_j]) for all i, j without building the concatenations.

    first (G, n, C), second (G, m, C) -> (G * n * m, out). A linear map of a concatenation is
    W_a f_i + W_b f_j + b, so each point is projected once instead of once per pair.
    """
    channels = first.shape[-1]
    weight_first, weight_second = layer.weight[:, :channels], layer.weight[:, channels:]
    projected = (first @ weight_first.T)[:, :, None] + (second @ weight_second.T + layer.bias)[:, None, :]
    return projected.flatten(0, 2)


class PairSimilarityNet(nn.Module):
    """Three residual blocks (2C -> D -> D -> D) and a 2-way head on concatenated pixel features.

    The net is order-sensitive ([f_i; f_j] differs from [f_j; f_i]); callers feed both orders.
    It sees detached features only, so it is a probe of the segmenter's mask features that never
    shapes them; its judgement reaches the segmenter through distillation alone. BatchNorm
    statistics are taken over all pairs of a call.
    """

    def __init__(self, feature_dim: int, hidden_dim: int, num_blocks: int = 3) -> None:
        super().__init__()
        # The first block always projects its shortcut: its input is a pair, its output a point
        # of width D (the official net does too, since D = C < 2C there).
        self.blocks = nn.ModuleList(
            [_ResidualBlock(2 * feature_dim, hidden_dim, project=True)]
            + [_ResidualBlock(hidden_dim, hidden_dim, project=False) for _ in range(num_blocks - 1)]
        )
        self.head = nn.Linear(hidden_dim, 2)

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        """Logits for every pair (i, j) of two point sets, in G independent grids.

        first (G, n, C), second (G, m, C): features of the points -> logits (G, n, m, 2).
        Column 0 is "different class", column 1 is "same class".
        """
        grids, n, m = first.shape[0], first.shape[1], second.shape[1]
        entry = self.blocks[0]
        x = entry.finish(_pairwise_linear(entry.fc1, first, second), _pairwise_linear(entry.shortcut, first, second))
        for block in self.blocks[1:]:
            x = block(x)
        return self.head(x).view(grids, n, m, 2)

    def same_probability(self, first: Tensor, second: Tensor) -> Tensor:
        """P(same class) for every pair: (G, n, C), (G, m, C) -> (G, n, m) in [0, 1]."""
        return self(first, second).softmax(dim=-1)[..., 1]
