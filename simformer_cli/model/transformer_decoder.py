"""MaskFormer's transformer predictor: a DETR decoder on res5 plus the class and mask heads.

No encoder layers (MaskFormer's setting): learnable queries attend to each other and to the
projected res5 map with a sine positional encoding. Every decoder layer's output goes through the
heads, so the criterion can supervise all layers (deep supervision).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sine_position_encoding(height: int, width: int, dim: int, device: torch.device) -> Tensor:
    """DETR's normalised sine encoding of a (height, width) grid -> (height * width, dim).

    The first dim/2 channels encode the row, the rest the column; coordinates are scaled to
    (0, 2*pi] so the encoding does not depend on the feature-map size.
    """
    half = dim // 2
    scale = 2 * math.pi
    eps = 1e-6
    rows = torch.arange(1, height + 1, device=device, dtype=torch.float32)
    cols = torch.arange(1, width + 1, device=device, dtype=torch.float32)
    rows = rows / (rows[-1] + eps) * scale
    cols = cols / (cols[-1] + eps) * scale
    freq = 10000 ** (2 * (torch.arange(half, device=device) // 2) / half)

    def encode(coords: Tensor) -> Tensor:
        angles = coords[:, None] / freq  # (n, half)
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(rows)[:, None, :].expand(height, width, half)
    pos_x = encode(cols)[None, :, :].expand(height, width, half)
    return torch.cat((pos_y, pos_x), dim=2).reshape(height * width, dim)


class DecoderLayer(nn.Module):
    """Post-norm DETR decoder layer: self-attention, cross-attention to the image, FFN."""

    def __init__(self, hidden_dim: int, nheads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(hidden_dim, nheads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(hidden_dim, nheads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(hidden_dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, hidden_dim)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.norm3 = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, memory: Tensor, query_pos: Tensor, memory_pos: Tensor,
                attn_mask: Tensor | None = None) -> Tensor:
        """tgt (B, Q, D), memory (B, HW, D), query_pos (B, Q, D), memory_pos (1, HW, D) -> (B, Q, D).

        ``attn_mask`` (B * nheads, Q, HW) bool, True where a query may not look (masked attention).
        """
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attended = self.cross_attn(tgt + query_pos, memory + memory_pos, memory, attn_mask=attn_mask,
                                   need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout(ffn))


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


class TransformerPredictor(nn.Module):
    """Queries -> per decoder layer (K+1)-way class logits and mask logits.

    ``forward(res5 (B, C5, h5, w5), mask_features (B, mask_dim, h, w))`` returns
    class logits (L, B, Q, K+1) and mask logits (L, B, Q, h, w) for all L decoder layers, where
    mask logit m_q(x) = <mask_embed(query q), mask_features(x)>. Index K is "no object".
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        dropout: float,
        mask_dim: int,
        masked_attention: bool = False,
    ) -> None:
        super().__init__()
        self.nheads = nheads
        self.masked_attention = masked_attention
        self.input_proj = nn.Conv2d(in_channels, hidden_dim, 1)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.layers = nn.ModuleList(
            DecoderLayer(hidden_dim, nheads, dim_feedforward, dropout) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        for parameter in self.layers.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        nn.init.kaiming_uniform_(self.input_proj.weight, a=1)
        nn.init.zeros_(self.input_proj.bias)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(self, features: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        batch, _, height, width = features.shape
        memory = self.input_proj(features).flatten(2).transpose(1, 2)  # (B, h*w, D)
        memory_pos = sine_position_encoding(height, width, memory.shape[-1], features.device)
        memory_pos = memory_pos.to(memory.dtype)[None]
        query_pos = self.query_embed.weight[None].expand(batch, -1, -1)
        tgt = torch.zeros_like(query_pos)
        class_logits, mask_logits = [], []
        attn_mask = None
        for layer in self.layers:
            tgt = layer(tgt, memory, query_pos, memory_pos, attn_mask)
            hidden = self.decoder_norm(tgt)
            class_logits.append(self.class_embed(hidden))
            mask_logits.append(torch.einsum("bqc,bchw->bqhw", self.mask_embed(hidden), mask_features))
            if self.masked_attention:
                attn_mask = self._attention_mask(mask_logits[-1], (height, width))
        return torch.stack(class_logits), torch.stack(mask_logits)

    def _attention_mask(self, mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
        """Masked attention (as in Mask2Former): the next layer's query q looks only where its
        current mask is on (sigmoid >= 0.5); a query whose mask is empty looks everywhere."""
        with torch.no_grad():
            logits = F.interpolate(mask_logits.float(), size=size, mode="bilinear", align_corners=False)
            blocked = (logits < 0).flatten(2)  # (B, Q, h*w)
            blocked &= ~blocked.all(dim=-1, keepdim=True)
            return blocked.repeat_interleave(self.nheads, dim=0)
