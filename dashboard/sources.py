"""Where the session's model comes from, as a small hashable record, and how to build it.

A :class:`ModelSource` is the identity of a model: the bundled demo, a torchvision or timm
architecture with pretrained or random weights, one of your own model factories, an uploaded
ONNX file, or uploaded weights for an architecture (files named by the SHA-256 of their bytes).
Two sessions with equal sources get the same weights, so the source (with the device) is the key
of every cache.

Your own code runs only where the person starting the server named it: ``streamlit run app.py --
--factory package.module:callable`` (repeatable) or ``FPGM_MODEL_FACTORIES`` (comma-separated).
:func:`build_source` refuses any other factory, whatever a session's state (or a shared link)
asks for, and an upload is only ever data.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Mapping, NamedTuple

import torch
from torch import Tensor

from fpgm_core import LoadedModel, ModelLoadError, build_model, load_weights
from fpgm_core.demo import DEMO_CHECKPOINT
from fpgm_core.models.factory import check_factory_spec

from .pretrained import pretrained_available, timm_pretrained_available

__all__ = [
    "ModelSource",
    "DEFAULT_SOURCE",
    "FALLBACK_SOURCE",
    "FACTORIES_ENV",
    "configured_factories",
    "default_source",
    "build_architecture",
    "build_source",
]

FACTORIES_ENV = "FPGM_MODEL_FACTORIES"


class ModelSource(NamedTuple):
    """What the session's model is built from.

    kind: "demo", "torchvision", "timm", "factory", "onnx" or "upload". arch: the architecture
    (``resnet18``, ``timm:resnet50``, ``package.module:callable``) or, for ONNX, the file name.
    weights: "default" (bundled, pretrained, the factory's own, the ONNX file's), "none" (random
    init, seeded) or, for weight uploads, the uploaded file's name. digest: SHA-256 of an upload's
    bytes. upload_format: "state_dict", "torchscript", "export" or "onnx". input_shape: for your
    own models, the shape given on the Model page (empty: the model's own).
    """

    kind: str
    arch: str
    weights: str
    digest: str = ""
    upload_format: str = ""
    input_shape: tuple[int, ...] = ()

    def label(self) -> str:
        """A short human description, e.g. ``resnet18 · pretrained``."""
        if self.kind == "upload":
            return f"{self.arch} · uploaded {self.weights}"
        if self.kind == "onnx":
            return f"{self.arch} · uploaded ONNX graph"
        if self.kind == "demo":
            return "demo digits CNN · bundled weights" if self.weights == "default" else "demo digits CNN · random init"
        if self.kind == "factory":
            return f"{self.arch} · your code"
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


def _argv_factories(argv: list[str]) -> list[str]:
    specs = []
    for index, arg in enumerate(argv):
        if arg == "--factory" and index + 1 < len(argv):
            specs.append(argv[index + 1])
        elif arg.startswith("--factory="):
            specs.append(arg.split("=", 1)[1])
    return specs


def configured_factories() -> tuple[str, ...]:
    """The model factories the person starting the server named (``--factory`` after ``--``, or the env var)."""
    specs = _argv_factories(sys.argv[1:])
    specs += [part for part in os.environ.get(FACTORIES_ENV, "").replace(";", ",").split(",")]
    return tuple(dict.fromkeys(check_factory_spec(spec) for spec in specs if spec.strip()))


def _require_configured(arch: str) -> None:
    if arch not in configured_factories():
        raise ModelLoadError(
            f"{arch} is not one of this server's model factories: code runs only when the person starting the server "
            f"names it (streamlit run app.py -- --factory {arch}, or {FACTORIES_ENV})"
        )


def build_architecture(source: ModelSource) -> LoadedModel:
    """The architecture of ``source`` with random (or the factory's own) weights; factories only if configured."""
    from fpgm_core.models import source_kind

    if source_kind(source.arch) == "factory":
        _require_configured(source.arch)
    return build_model(source.arch, "none", input_shape=source.input_shape or None)


def build_source(source: ModelSource, device: str, state: Mapping[str, Tensor] | bytes | None = None) -> LoadedModel:
    """Build the model ``source`` names, in eval mode, on ``device``.

    Pretrained torchvision and timm weights are used only when already in the local cache (the
    Model page downloads them first, with a progress bar); otherwise the model is random-init with
    a notice. Uploads need their ``state`` (read by :mod:`dashboard.uploads`): the tensors, or an
    ONNX file's bytes.
    """
    if source.kind == "upload":
        if state is None:
            raise ModelLoadError("the uploaded weights are no longer in this session: upload the file again")
        base = build_architecture(source)
        load_weights(base.model, state)
        loaded = LoadedModel(base.model, base.arch, source.weights, base.input_shape)
    elif source.kind == "onnx":
        if not isinstance(state, (bytes, bytearray)):
            raise ModelLoadError("the uploaded ONNX file is no longer in this session: upload it again")
        from fpgm_core.models.onnx import build_onnx

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the page shows them from loaded.onnx
            loaded = build_onnx(bytes(state), source.arch, input_shape=source.input_shape or None)
    elif source.kind == "demo":
        if source.weights == "default" and not DEMO_CHECKPOINT.is_file():
            raise ModelLoadError("the bundled demo weights are not installed (fpgm_core/assets/demo.safetensors)")
        loaded = build_model("demo", source.weights)
    elif source.kind == "factory":
        loaded = build_architecture(source)
    elif source.kind in ("torchvision", "timm"):
        cached = pretrained_available(source.arch) if source.kind == "torchvision" else timm_pretrained_available(source.arch)
        if source.weights == "default" and not cached:
            base = build_model(source.arch, "none")
            where = "torch hub" if source.kind == "torchvision" else "Hugging Face"
            notice = (
                f"pretrained weights for {source.arch} are not in the local {where} cache; "
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
    return LoadedModel(model, loaded.arch, loaded.weights, loaded.input_shape, loaded.notice, loaded.onnx)
