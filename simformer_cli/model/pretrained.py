"""ImageNet ResNet weights by name (``--backbone-weights imagenet``), through torch's hub cache.

The files are the ones torchvision publishes for its ResNets (the original ImageNet recipe), in its
key layout, which :func:`~simformer_cli.model.backbone.load_backbone_weights` reads. They are
fetched once with ``torch.hub.load_state_dict_from_url``, which checks the published hash (the
hex digits in the file name are the start of its sha256) and keeps the file in
``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME``); later runs read the cached file, as torch's
own loader does. torchvision itself is not needed.
"""

from __future__ import annotations

from pathlib import Path

from simformer_cli.errors import UserError

#: name -> (backbone it fits, published file)
IMAGENET_WEIGHTS = {
    "imagenet-r50": ("resnet50", "https://download.pytorch.org/models/resnet50-0676ba61.pth"),
    "imagenet-r101": ("resnet101", "https://download.pytorch.org/models/resnet101-63fe2227.pth"),
}
#: ``imagenet`` picks the file of the configured backbone.
NAMES = ("imagenet", *IMAGENET_WEIGHTS)


def cached_path(url: str) -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def imagenet_weights(name: str, backbone: str) -> Path:
    """The cached file of ``name`` for ``backbone``, fetched first where it is not cached yet."""
    if name == "imagenet":
        matching = [key for key, (fits, _) in IMAGENET_WEIGHTS.items() if fits == backbone]
        if not matching:
            raise UserError(f"--backbone-weights imagenet: there are ImageNet weights for resnet50 and resnet101, "
                            f"not for the {backbone} backbone; choose a ResNet preset or pass a local file")
        name = matching[0]
    fits, url = IMAGENET_WEIGHTS[name]
    if fits != backbone:
        raise UserError(f"--backbone-weights {name}: these are {fits} weights but the model's backbone is {backbone}; "
                        f"use --backbone-weights imagenet (picks by backbone) or --set model.backbone={fits}")
    path = cached_path(url)
    if path.is_file():
        return path
    import torch.hub

    try:
        torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True, weights_only=True)
    except (OSError, RuntimeError) as exc:  # offline (URLError is an OSError), or the hash did not match
        raise UserError(f"--backbone-weights {name}: cannot fetch {url} ({type(exc).__name__}: "
                        f"{str(exc)[:120]}); where this machine is offline, download the file elsewhere and place it "
                        f"at {path}, or pass a local file") from None
    return path
