"""Where the session's model comes from, as a small hashable record, and how to build it.

A :class:`ModelSource` is the identity of a model: the bundled demo, a torchvision architecture
with pretrained or random weights, or an uploaded file (named by the SHA-256 of its bytes). Two
sessions with equal sources get the same weights, so the source (with the device) is the key of
every cache.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import torch
from torch import Tensor

from fpgm_core import LoadedModel, ModelLoadError, build_model, load_weights
from fpgm_core.demo import DEMO_CHECKPOINT

from .pretrained import pretrained_available

__all__ = ["ModelSource", "DEFAULT_SOURCE", "FALLBACK_SOURCE", "default_source", "build_source"]


class ModelSource(NamedTuple):
    """What the session's model is built from.

    kind: "demo", "torchvision" or "upload". weights: "default" (bundled or pretrained),
    "none" (random init, seeded) or, for uploads, the uploaded file's name. digest: SHA-256 of
    an upload's bytes. upload_format: "state_dict", "torchscript" or "export" for uploads.
    """

    kind: str
    arch: str
    weights: str
    digest: str = ""
    upload_format: str = ""

    def label(self) -> str:
        """A short human description, e.g. ``resnet18 · pretrained``."""
        if self.kind == "upload":
            return f"{self.arch} · uploaded {self.weights}"
        if self.kind == "demo":
            return "demo digits CNN · bundled weights" if self.weights == "default" else "demo digits CNN · random init"
        return f"{self.arch} · {'pretrained' if self.weights == 'default' else 'random init'}"


# The model a new session opens with. The bundled demo needs no download; until its weights are
# installed the dashboard opens FALLBACK_SOURCE instead (pretrained when cached, else random init).
DEFAULT_SOURCE = ModelSource("demo", "demo", "default")
FALLBACK_SOURCE = ModelSource("torchvision", "resnet18", "default")


def default_source() -> ModelSource:
    """DEFAULT_SOURCE when its weights are installed, else FALLBACK_SOURCE."""
    if DEFAULT_SOURCE.kind == "demo" and not DEMO_CHECKPOINT.is_file():
        return FALLBACK_SOURCE
    return DEFAULT_SOURCE


def build_source(source: ModelSource, device: str, state: Mapping[str, Tensor] | None = None) -> LoadedModel:
    """Build the model ``source`` names, in eval mode, on ``device``.

    Pretrained torchvision weights are used only when already in the local torch hub cache (the
    Model page downloads them first, with a progress bar); otherwise the model is random-init with
    a notice. Uploads need their ``state`` (read by :mod:`dashboard.uploads`).
    """
    if source.kind == "upload":
        if state is None:
            raise ModelLoadError("the uploaded weights are no longer in this session: upload the file again")
        base = build_model(source.arch, "none")
        load_weights(base.model, state)
        loaded = LoadedModel(base.model, source.arch, source.weights, base.input_shape)
    elif source.kind == "demo":
        if source.weights == "default" and not DEMO_CHECKPOINT.is_file():
            raise ModelLoadError("the bundled demo weights are not installed (fpgm_core/assets/demo.safetensors)")
        loaded = build_model("demo", source.weights)
    elif source.kind == "torchvision":
        if source.weights == "default" and not pretrained_available(source.arch):
            base = build_model(source.arch, "none")
            notice = (
                f"pretrained weights for {source.arch} are not in the local torch hub cache; "
                "showing a random initialisation (seeded, reproducible) instead"
            )
            loaded = LoadedModel(base.model, base.arch, "none", base.input_shape, notice)
        else:
            loaded = build_model(source.arch, source.weights)
    else:
        raise ModelLoadError(f"unknown model source {source.kind!r}")
    model = loaded.model.to(torch.device(device)).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return LoadedModel(model, loaded.arch, loaded.weights, loaded.input_shape, loaded.notice)
