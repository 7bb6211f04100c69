"""Named choices that the command line, the stages and the manifests share."""

from __future__ import annotations

from typing import Literal

#: Where a stage runs: auto picks CUDA when PyTorch sees a GPU, else the CPU (``devices`` resolves it).
DeviceChoice = Literal["auto", "cpu", "cuda"]
#: train: weak labels; val: the usual validation images; test: held out for reporting (synthetic, or a
#: folder dataset with images/test); holdout: training images held out for tuning (split --holdout).
SubsetName = Literal["train", "val", "test", "holdout"]
#: Which classes a pixel's pseudo label is chosen among: all (the argmax over every class, kept where
#: it is one of the image's novel classes: the paper), image (the best of the image's novel classes),
#: quantile (the same, scores ranked per class) or groups (the same, by the evidence for the
#: pixel's k-means group).
Among = Literal["all", "image", "quantile", "groups"]
#: ``groups``: the k-means groups of the pixels without base ground truth, and the share of an
#: image's such pixels from which a group counts as appearing in it.
GROUPS = 12
APPEARS = 0.1
#: ``groups``: what an open pixel takes when its group has no positive evidence for any novel class
#: of its image: the class with the most evidence all the same (name), or nothing (ignore).
Unnamed = Literal["name", "ignore"]
#: Where the pipeline's retraining starts: the one-stage model's weights, or the preset's initialisation (the paper).
RetrainStart = Literal["one-stage", "scratch"]
