"""MaskFormer network and the SimFormer objective: backbone -> pixel decoder -> transformer
predictor, matcher and criterion (with the similarity net). Pure PyTorch; runs on CPU."""

from simformer_cli.model.backbone import BackboneWeightsError, load_backbone_weights
from simformer_cli.model.criterion import SetCriterion, build_criterion, total_loss
from simformer_cli.model.maskformer import SIZE_DIVISOR, MaskFormer, build_model, normalize_images, semantic_scores
from simformer_cli.model.targets import ImageTargets, targets_from_label_map

__all__ = [
    "BackboneWeightsError",
    "ImageTargets",
    "MaskFormer",
    "SIZE_DIVISOR",
    "SetCriterion",
    "build_criterion",
    "build_model",
    "load_backbone_weights",
    "normalize_images",
    "semantic_scores",
    "targets_from_label_map",
    "total_loss",
]
