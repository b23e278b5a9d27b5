"""The torchvision source: its image-classification architectures, random or pretrained.

Pretrained weights come through torchvision's own loader (the local torch hub cache, else a
download); ``none`` is a random init seeded 0, so it always means the same weights.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelLoadError
from .checkpoints import load_weights, read_state_dict
from .loaded import LoadedModel, seeded_init

__all__ = ["classification_architectures", "torchvision_input_shape", "build_torchvision"]


def classification_architectures() -> list[str]:
    """Names of torchvision's image-classification architectures (``resnet18``, ``vit_b_16``, …)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_input_shape(arch: str) -> tuple[int, ...]:
    """The input a torchvision classifier expects, batch 1."""
    # Inception v3 is the one torchvision classifier that needs 299 px inputs.
    return (1, 3, 299, 299) if arch == "inception_v3" else (1, 3, 224, 224)


def build_torchvision(arch: str, weights: str | os.PathLike = "none", *, allow_random_fallback: bool = False) -> LoadedModel:
    """A torchvision classifier in eval mode.

    Args:
        arch: a torchvision classification architecture name.
        weights: ``"none"`` (random init, seeded 0), ``"default"`` (pretrained, from the local
            cache or downloaded) or a state_dict file (.pt, .pth, .safetensors).
        allow_random_fallback: when default weights cannot be had, return a random-init model
            with a ``notice`` instead of raising.
    """
    import torchvision

    if arch not in classification_architectures():
        raise ModelLoadError(
            f"unknown architecture {arch!r}: use a torchvision classification model such as "
            "resnet18, resnet50, mobilenet_v2 or vit_b_16 (`python -m fpgm_core archs` lists them), "
            "timm:NAME for a timm model, a .onnx file, or package.module:callable for your own code"
        )
    weights = str(weights)
    with seeded_init():
        model = torchvision.models.get_model(arch, weights=None)
    notice = None
    if weights == "default":
        try:
            weight_enum = torchvision.models.get_model_weights(arch).DEFAULT
            state = weight_enum.get_state_dict(progress=False, check_hash=False)
            model.load_state_dict(state)
        except Exception as exc:  # network errors come as URLError, OSError, RuntimeError…
            message = (
                f"pretrained weights for {arch} could not be loaded (not in the local torch hub cache "
                f"and the download failed: {type(exc).__name__}: {str(exc)[:160]})"
            )
            if not allow_random_fallback:
                raise ModelLoadError(message + "; use --weights none or a local state_dict file") from exc
            notice = message + "; using random initialisation instead"
    elif weights != "none":
        load_weights(model, read_state_dict(weights))
    label = weights if weights in ("none", "default") else Path(weights).name
    return LoadedModel(model.eval(), arch, label, torchvision_input_shape(arch), notice)
