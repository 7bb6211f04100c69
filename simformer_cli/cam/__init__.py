"""The CAM baseline (``simformer train --method cam``): a multi-label classifier's class activation
maps for the novel classes, refined by a random walk on a pixel affinity learned on base-class
pixels, turned into pseudo labels (with base ground truth) for a segmenter trained by ``retrain``.

``network`` (backbone + CAM and affinity heads), ``losses`` (the training objective), ``affinity``
(pixel affinities and the random walk), ``pseudolabel`` (per-image refined novel-class scores for
the shared pseudo-label rule); the settings the model manifest records are ``settings.cam``.
"""
