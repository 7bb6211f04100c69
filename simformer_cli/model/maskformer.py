"""The MaskFormer network, its semantic read-out, and ``build_model``: the one place it is assembled."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from simformer_cli.model.backbone import ResNet, TinyBackbone, build_backbone
from simformer_cli.model.pixel_decoder import BasePixelDecoder
from simformer_cli.model.transformer_decoder import TransformerPredictor
from simformer_cli.settings.model import ModelSettings

#: ImageNet statistics of 0-255 RGB images, as used by torchvision and detectron2 R-50 weights.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
#: Input sides are padded to a multiple of this: the backbone's coarsest stride.
SIZE_DIVISOR = 32


def normalize_images(images: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in 0..255 (any dtype) -> float32, ImageNet mean/std normalised."""
    mean = torch.tensor(PIXEL_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() - mean) / std


def semantic_scores(pred_logits: Tensor, pred_masks: Tensor) -> Tensor:
    """Per-class score maps S_c(x) = sum_q softmax(z_q)[c] * sigmoid(m_q(x)), c < K.

    pred_logits (B, Q, K+1), pred_masks (B, Q, h, w) -> (B, K, h, w). The no-object column is
    dropped after the softmax, so a query sure of "no object" contributes nothing.
    """
    class_probs = pred_logits.float().softmax(dim=-1)[..., :-1]
    return torch.einsum("bqk,bqhw->bkhw", class_probs, pred_masks.float().sigmoid())


class MaskFormer(nn.Module):
    """Backbone -> FPN pixel decoder (stride-4 mask features) -> transformer predictor."""

    def __init__(
        self,
        *,
        backbone: ResNet | TinyBackbone,
        pixel_decoder: BasePixelDecoder,
        predictor: TransformerPredictor,
        transformer_in_feature: str = "res5",
    ) -> None:
        super().__init__()
        self.transformer_in_feature = transformer_in_feature
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    def forward(self, images: Tensor) -> dict[str, Tensor | list[dict[str, Tensor]]]:
        """Normalised images (B, 3, H, W), H and W multiples of 32 ->

        - "pred_logits" (B, Q, K+1): class logits of the last decoder layer (index K = no object);
        - "pred_masks" (B, Q, H/4, W/4): mask logits of the last layer;
        - "aux_outputs": the same two keys for each earlier layer, first layer first;
        - "mask_features" (B, mask_dim, H/4, W/4): the per-pixel embeddings (for the similarity net).
        """
        features = self.backbone(images)
        mask_features = self.pixel_decoder(features)
        memory = mask_features if self.transformer_in_feature == "pixel_embedding" else features[self.transformer_in_feature]
        class_logits, mask_logits = self.predictor(memory, mask_features)
        aux_outputs = [
            {"pred_logits": logits, "pred_masks": masks}
            for logits, masks in zip(class_logits[:-1], mask_logits[:-1])
        ]
        return {
            "pred_logits": class_logits[-1],
            "pred_masks": mask_logits[-1],
            "aux_outputs": aux_outputs,
            "mask_features": mask_features,
        }


def build_model(settings: ModelSettings) -> MaskFormer:
    """Build the whole network from its settings (randomly initialised; see load_backbone_weights)."""
    backbone = build_backbone(
        settings.backbone, norm=settings.backbone_norm, tiny_channels=settings.tiny_channels
    )
    pixel_decoder = BasePixelDecoder(
        backbone.out_channels,
        conv_dim=settings.conv_dim,
        mask_dim=settings.mask_dim,
        norm_groups=settings.norm_groups,
    )
    predictor = TransformerPredictor(
        in_channels=(settings.mask_dim if settings.transformer_in_feature == "pixel_embedding"
                     else backbone.out_channels[settings.transformer_in_feature]),
        num_classes=settings.num_classes,
        hidden_dim=settings.hidden_dim,
        num_queries=settings.num_queries,
        nheads=settings.nheads,
        dim_feedforward=settings.dim_feedforward,
        dec_layers=settings.dec_layers,
        dropout=settings.dropout,
        mask_dim=settings.mask_dim,
        masked_attention=settings.masked_attention,
    )
    return MaskFormer(backbone=backbone, pixel_decoder=pixel_decoder, predictor=predictor,
                      transformer_in_feature=settings.transformer_in_feature)
