"""One entry point for every source: :func:`build_model` reads what ``arch`` names and builds it.

``arch`` is ``demo``; a torchvision architecture (``resnet18``); ``timm:NAME``; a path ending in
``.onnx``; or ``package.module:callable`` (your own code, run because you named it).
"""

from __future__ import annotations

import os
from typing import Sequence

from .loaded import LoadedModel

__all__ = ["SOURCE_KINDS", "source_kind", "build_model"]

SOURCE_KINDS = ("demo", "torchvision", "timm", "onnx", "factory")


def source_kind(arch: str) -> str:
    """Which source ``arch`` names: one of :data:`SOURCE_KINDS`."""
    from .factory import is_factory_spec
    from .onnx import is_onnx_path
    from .timm import TIMM_PREFIX

    arch = str(arch)
    if arch == "demo":
        return "demo"
    if is_onnx_path(arch):
        return "onnx"
    if arch.startswith(TIMM_PREFIX):
        return "timm"
    if is_factory_spec(arch):
        return "factory"
    return "torchvision"


def build_model(arch: str, weights: str | os.PathLike = "none", *, allow_random_fallback: bool = False,
                input_shape: str | Sequence[int] | None = None) -> LoadedModel:
    """Build the model ``arch`` names, in eval mode.

    Args:
        arch: ``demo``, a torchvision architecture, ``timm:NAME``, an ``.onnx`` path or ``package.module:callable``.
        weights: ``"none"`` (random init, seeded 0), ``"default"`` (pretrained / bundled / the
            callable's own), or a state_dict file (.pt, .pth, .safetensors). An ONNX file carries
            its weights: only ``none``/``default`` are accepted, both meaning the file's.
        allow_random_fallback: when pretrained weights cannot be had, return a random-init model
            with a ``notice`` instead of raising.
        input_shape: for factories and ONNX graphs with open sizes: the input shape (batch first).
    """
    from ..errors import ModelLoadError

    kind = source_kind(arch)
    if kind == "demo":
        from .demo import build_demo

        return build_demo(weights)
    if kind == "timm":
        from .timm import build_timm

        return build_timm(arch, weights, allow_random_fallback=allow_random_fallback)
    if kind == "onnx":
        from .onnx import build_onnx

        if str(weights) not in ("none", "default"):
            raise ModelLoadError(f"{arch}: an ONNX file carries its own weights; leave out --weights (or give 'default')")
        return build_onnx(arch, input_shape=input_shape)
    if kind == "factory":
        from .factory import build_factory

        return build_factory(arch, weights, input_shape=input_shape)
    from .torchvision import build_torchvision

    return build_torchvision(arch, weights, allow_random_fallback=allow_random_fallback)
