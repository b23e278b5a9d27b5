"""What every model source returns, and the small helpers all sources share.

A :class:`LoadedModel` is the same record whichever source built it (the demo, torchvision,
timm, an ONNX file or the user's own callable): an ``nn.Module`` in eval mode, the names that
rebuild it (``arch``, ``weights``), the input shape it expects, and an optional notice for the
user. An ONNX source also carries its graph (:class:`fpgm_core.onnx_graph.OnnxModel`), so the
masked ``.onnx`` export can be written from the file itself.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from torch import nn

from ..errors import ModelLoadError

if TYPE_CHECKING:  # imported lazily at run time: onnx loads only for ONNX sources
    from ..onnx_graph import OnnxModel

__all__ = ["LoadedModel", "seeded_init", "parse_input_shape", "arch_slug"]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for pruning, with what identifies it and the input it expects.

    ``onnx`` is set for models read from an ONNX file: ``model`` is then the graph converted to
    PyTorch, or a view of its Conv/Gemm initializers when it does not convert (see
    :mod:`fpgm_core.onnx_graph`).
    """

    model: nn.Module
    arch: str
    weights: str
    input_shape: tuple[int, ...]
    notice: str | None = None
    onnx: OnnxModel | None = None


@contextlib.contextmanager
def seeded_init(seed: int = 0) -> Iterator[None]:
    """Seed torch's CPU generator for a model's random init without touching the caller's RNG.

    "Random init" then always means the same weights, so recipes and caches keyed by the name hold.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def parse_input_shape(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,3,32,32"``, ``"3x32x32"`` or a sequence → a batch-first shape (batch 1 added to 3-D ones).

    Raises ModelLoadError for anything but 2–6 positive integers.
    """
    if isinstance(text, str):
        parts = [part for part in re.split(r"[,x×\s]+", text.strip()) if part]
        try:
            dims = tuple(int(part) for part in parts)
        except ValueError as exc:
            raise ModelLoadError(f"input shape {text!r}: expected integers like 1,3,224,224") from exc
    else:
        dims = tuple(int(d) for d in text)
    if len(dims) == 3:
        dims = (1, *dims)  # C×H×W: one image
    if not 2 <= len(dims) <= 6 or any(d <= 0 for d in dims):
        raise ModelLoadError(f"input shape {text!r}: expected 2 to 6 positive integers, batch first (e.g. 1,3,224,224)")
    return dims


def arch_slug(arch: str) -> str:
    """A file-name-safe form of an architecture name: ``timm:resnet50`` → ``timm-resnet50``.

    ONNX files lose their suffix (``model.onnx`` → ``model``); anything but letters, digits, ``.``,
    ``_`` and ``-`` becomes ``-``.
    """
    name = arch.rsplit("/", 1)[-1]
    if name.lower().endswith(".onnx"):
        name = name[: -len(".onnx")]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"
