"""What the Export page offers: file names, file bytes, and the code that reproduces the result.

The bytes are built by the engine (``verified_masked_state``: masked on a copy and checked,
``serialize_tensors``, ``make_recipe``/``recipe_json``; for an ONNX model the masked graph of
``fpgm_core.onnx_graph``, checked in onnxruntime), so a download equals what
``python -m fpgm_core prune`` writes.
A file that cannot be built (memory, a library error partway through serialising) becomes an
ExportError naming the file and the cause: :func:`build_file` for files built with the page,
:func:`built_when_clicked` for those built only when their button is clicked. Nothing partial is
served either way, and the model (only ever copied) and the plan are left as they were.
"""

from __future__ import annotations

from pathlib import Path
from shlex import quote
from typing import Callable, Mapping, MutableMapping

import torch
from torch import Tensor

from fpgm_core import (
    ExportError,
    FpgmError,
    LayerInfo,
    LoadedModel,
    SparsityPlan,
    make_recipe,
    recipe_json,
    serialize_tensors,
)
from fpgm_core.export import verified_masked_state

from fpgm_core.models import arch_slug, source_kind

from .sources import ModelSource

__all__ = [
    "export_stem",
    "checkpoint_bytes",
    "onnx_bytes",
    "masks_bytes",
    "recipe_bytes",
    "original_weights_bytes",
    "weights_argument",
    "load_snippet",
    "cli_command",
    "build_file",
    "built_when_clicked",
]


def export_stem(loaded: LoadedModel) -> str:
    """Base file name of the exports, e.g. ``resnet18-fpgm``, ``timm-resnet50-fpgm``, ``mynet-fpgm`` (mynet.onnx)."""
    return f"{arch_slug(loaded.arch)}-fpgm"


def checkpoint_bytes(loaded: LoadedModel, masks: Mapping[str, Tensor], fmt: str) -> bytes:
    """The masked state_dict as ``.pt`` or ``.safetensors`` bytes, checked as the CLI's; the cached model is not touched."""
    return serialize_tensors(verified_masked_state(loaded.model, masks, input_shape=tuple(loaded.input_shape)), fmt)


def onnx_bytes(loaded: LoadedModel, masks: Mapping[str, Tensor]) -> bytes:
    """The uploaded ONNX graph with the pruned filters (and their BatchNorm channels) zeroed, checked in onnxruntime."""
    from fpgm_core.onnx_graph import masked_onnx_bytes

    if loaded.onnx is None:
        raise ExportError("a masked .onnx is made from an ONNX model; this model is not one")
    return masked_onnx_bytes(loaded.onnx, masks, tuple(loaded.input_shape))


def masks_bytes(masks: Mapping[str, Tensor], fmt: str) -> bytes:
    """The keep-masks (layer name → bool, True = kept) as ``.pt`` or ``.safetensors`` bytes."""
    return serialize_tensors({name: keep.to(torch.bool) for name, keep in masks.items()}, fmt)


def original_weights_bytes(loaded: LoadedModel) -> bytes:
    """The unpruned weights as safetensors (for the CLI when the upload was not a state_dict)."""
    return serialize_tensors(loaded.model.state_dict(), "safetensors")


def weights_argument(loaded: LoadedModel, source: ModelSource) -> str:
    """The ``--weights`` value that rebuilds these weights headlessly (``default`` for an ONNX file's own)."""
    if source.kind != "upload":
        return loaded.weights
    if source.upload_format == "state_dict":
        return source.weights
    return f"{Path(source.weights).stem}.safetensors"


def recipe_bytes(
    loaded: LoadedModel, source: ModelSource, plan: SparsityPlan, counts: Mapping[str, int], layers: list[LayerInfo]
) -> bytes:
    """The recipe JSON of ``plan`` resolved to ``counts`` on this model."""
    recipe = make_recipe(loaded.model, plan, counts, layers, arch=loaded.arch, weights=weights_argument(loaded, source))
    return recipe_json(recipe).encode()


def _build_line(loaded: LoadedModel) -> str:
    """Python that rebuilds the unmodified architecture as ``model``."""
    kind = source_kind(loaded.arch)
    if kind == "demo":
        return "from fpgm_core.demo import DemoNet\n\nmodel = DemoNet()"
    if kind == "timm":
        return f'import timm\n\nmodel = timm.create_model("{loaded.arch.split(":", 1)[1]}", pretrained=False)'
    if kind == "factory":
        module, function = loaded.arch.split(":", 1)
        return f"from {module} import {function.split('.')[0]}\n\nmodel = {function}()  # your factory"
    return f'import torchvision\n\nmodel = torchvision.models.get_model("{loaded.arch}", weights=None)'


def load_snippet(loaded: LoadedModel, fmt: str = "safetensors") -> str:
    """Python that rebuilds the architecture and loads the pruned checkpoint with ``strict=True``.

    For an ONNX model: onnxruntime running the masked graph, and the masks.
    """
    stem = export_stem(loaded)
    if loaded.onnx is not None:
        shape = ", ".join(str(d) for d in loaded.input_shape)
        return (
            "import numpy as np\nimport onnxruntime as ort\nfrom safetensors.numpy import load_file\n\n"
            f'session = ort.InferenceSession("{stem}.onnx", providers=["CPUExecutionProvider"])\n'
            f"x = np.random.rand({shape}).astype(np.float32)\n"
            "outputs = session.run(None, {session.get_inputs()[0].name: x})\n"
            f'masks = load_file("{stem}.masks.safetensors")  # layer name -> bool keep-mask (True = kept)\n'
            "# Pruned filters (mask False) and their BatchNormalization channels hold exactly zero.\n"
        )
    build = _build_line(loaded)
    if fmt == "safetensors":
        load = (
            "from safetensors.torch import load_file\n"
            f"{build}\n"
            f'model.load_state_dict(load_file("{stem}.safetensors"), strict=True)\n'
            f'masks = load_file("{stem}.masks.safetensors")  # layer name -> bool keep-mask (True = kept)'
        )
    else:
        load = (
            "import torch\n"
            f"{build}\n"
            f'model.load_state_dict(torch.load("{stem}.pt", weights_only=True), strict=True)\n'
            f'masks = torch.load("{stem}.masks.pt", weights_only=True)  # layer name -> bool keep-mask'
        )
    return load + "\nmodel.eval()\n# Pruned filters (mask False) and their BatchNorm channels hold exactly zero.\n"


def cli_command(loaded: LoadedModel, source: ModelSource) -> str:
    """The headless command that reproduces the export from the recipe."""
    stem = export_stem(loaded)
    if loaded.onnx is not None:
        shape = f" --input-shape {','.join(map(str, source.input_shape))}" if source.input_shape else ""
        return f"python -m fpgm_core prune --arch {quote(loaded.arch)}{shape} --recipe {stem}.recipe.json --out {stem}.onnx"
    shape = f" --input-shape {','.join(map(str, source.input_shape))}" if source.input_shape else ""
    return (
        f"python -m fpgm_core prune --arch {quote(loaded.arch)} --weights {quote(weights_argument(loaded, source))}{shape} "
        f"--recipe {stem}.recipe.json --out {stem}.safetensors"
    )


def build_file(name: str, build: Callable[[], bytes]) -> bytes:
    """``build()``, the bytes of the download ``name``; ExportError naming the file and the cause if it fails."""
    try:
        return build()
    except Exception as exc:  # serialising can fail anywhere: memory, a full temporary disk, a library error
        cause = str(exc) if isinstance(exc, FpgmError) else f"{type(exc).__name__}: {exc}"
        raise ExportError(f"{name} could not be built ({cause}). Nothing was downloaded; the model and the plan "
                          "are unchanged, so you can try again.") from exc


def built_when_clicked(name: str, build: Callable[[], bytes], failures: MutableMapping[str, str]) -> Callable[[], bytes]:
    """``build`` for a download built only when its button is clicked, outside any page run.

    Streamlit then tells the browser only that the download failed, so the message is also kept in
    ``failures`` (the session's), for the page to show on its next run.
    """

    def run() -> bytes:
        try:
            return build_file(name, build)
        except ExportError as exc:
            failures[name] = str(exc)
            raise

    return run
