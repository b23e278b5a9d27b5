"""The masked ``.onnx`` export: the user's graph with the pruned filters zeroed, checked in onnxruntime.

For each pruned output channel of a layer, its weights and bias are zeroed in a copy of the file's
graph, and where a BatchNormalization reads the layer's output directly, that channel's scale and
bias too (otherwise it would output ``B − mean·scale/σ``, not zero). Everything else in the file
(other nodes, names, metadata, opset) is kept as it was.

Before anything is served or written, the copy runs in onnxruntime on a random input with every
pruned layer's output (and its BatchNorm's) added as a graph output, and every pruned channel
must be exactly zero there; otherwise it is an ExportError naming the layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from ..errors import ExportError, PlanError
from ..export import ExportedFiles, serialize_tensors, write_atomically
from ..recipe import recipe_json
from .analysis import OnnxLayer, tensor_array
from .editing import with_inputs, with_outputs
from .model import OnnxModel, declared_input
from .runtime import inference_session, run

__all__ = ["masked_graph", "check_masked_graph", "masked_onnx_bytes", "onnx_export_paths", "export_masked_onnx"]


def _zero_filters(layer: OnnxLayer, weight: np.ndarray, pruned: np.ndarray) -> np.ndarray:
    weight = np.array(weight, copy=True)
    if layer.op_type == "Conv":
        weight[pruned] = 0
    elif layer.op_type == "Gemm":
        if layer.trans_b:
            weight[pruned, :] = 0
        else:
            weight[:, pruned] = 0
    else:  # ConvTranspose: (in, out / groups, *kernel); output channel g·(out/groups) + j
        groups = layer.groups
        grouped = weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])
        per_group = pruned.reshape(groups, weight.shape[1])
        for group in range(groups):
            grouped[group][:, per_group[group]] = 0
        weight = grouped.reshape(weight.shape)
    return weight


def masked_graph(onnx_model: OnnxModel, masks: Mapping[str, Tensor]):
    """A copy of the file's graph with the filters ``masks`` prune (False) zeroed; the original is untouched."""
    proto = onnx_model.proto
    graph = proto.graph
    sources = onnx_model.constants
    replacements: dict[tuple[int, int], np.ndarray] = {}
    for name, keep in masks.items():
        try:
            layer = onnx_model.layer_of(name)
        except Exception as exc:
            raise PlanError(f"mask for unknown layer {name!r}: not a prunable layer of {onnx_model.filename}") from exc
        pruned = ~keep.detach().to("cpu", torch.bool).numpy()
        if pruned.shape != (layer.filters,):
            raise PlanError(f"mask for layer {name!r} has shape {pruned.shape}, expected ({layer.filters},)")
        if not pruned.any():
            continue
        replacements[(layer.index, 1)] = _zero_filters(layer, tensor_array(sources[layer.weight]), pruned)
        if layer.bias:
            bias = np.array(tensor_array(sources[layer.bias]), copy=True)
            bias[pruned] = 0
            replacements[(layer.index, 2)] = bias
        if layer.batchnorm is not None:
            norm = graph.node[layer.batchnorm]
            for slot in (1, 2):  # scale and bias of that channel: the BatchNorm then outputs 0
                values = np.array(tensor_array(sources[norm.input[slot]]), copy=True)
                values[pruned] = 0
                replacements[(layer.batchnorm, slot)] = values
    return with_inputs(proto, replacements, sources)


def check_masked_graph(masked, onnx_model: OnnxModel, masks: Mapping[str, Tensor], input_shape: tuple[int, ...]) -> dict[str, int]:
    """Run ``masked`` in onnxruntime and require every pruned channel to be exactly zero.

    The output of each pruned layer, and of the BatchNorm directly after it, is read; channels are
    dim 1 (Conv, ConvTranspose) or the last dim (Gemm). Returns the number of pruned channels
    checked per value; raises ExportError naming the first layer whose pruned channels are not zero.
    """
    graph = onnx_model.proto.graph
    watched: dict[str, tuple[str, np.ndarray, int]] = {}
    for name, keep in masks.items():
        layer = onnx_model.layer_of(name)
        pruned = ~keep.detach().to("cpu", torch.bool).numpy()
        if not pruned.any():
            continue
        axis = -1 if layer.op_type == "Gemm" else 1
        watched[layer.output] = (name, pruned, axis)
        if layer.batchnorm is not None:
            watched[graph.node[layer.batchnorm].output[0]] = (f"{name} (after its BatchNormalization)", pruned, 1)
    input_name, _, dtype = declared_input(masked)
    sample = np.random.default_rng(0).standard_normal(input_shape).astype(dtype)
    try:
        values = run(inference_session(with_outputs(masked, watched)), {input_name: sample})
    except Exception as exc:  # onnxruntime's own errors (invalid graph, shape mismatch)
        raise ExportError(f"the masked ONNX graph does not run in onnxruntime: {str(exc)[:300]}") from exc
    checked = {}
    for value, (label, pruned, axis) in watched.items():
        output = np.moveaxis(np.asarray(values[value]), axis, 0)
        if output.shape[0] != pruned.shape[0]:
            raise ExportError(f"layer {label}: its output has {output.shape[0]} channels, the mask {pruned.shape[0]}")
        if np.any(output[pruned] != 0):
            worst = float(np.abs(output[pruned]).max())
            raise ExportError(f"layer {label}: pruned channels are not zero in onnxruntime (max |value| {worst:.3g}); nothing was exported")
        checked[label] = int(pruned.sum())
    for name in (value.name for value in masked.graph.output):
        if not np.all(np.isfinite(np.asarray(values[name], dtype=np.float64))):
            raise ExportError(f"the masked ONNX graph's output {name!r} is not finite")
    return checked


def masked_onnx_bytes(onnx_model: OnnxModel, masks: Mapping[str, Tensor], input_shape: tuple[int, ...]) -> bytes:
    """The masked graph as ``.onnx`` bytes, after :func:`check_masked_graph` passed."""
    masked = masked_graph(onnx_model, masks)
    check_masked_graph(masked, onnx_model, masks, input_shape)
    return masked.SerializeToString()


def onnx_export_paths(out: str | os.PathLike) -> ExportedFiles:
    """``FILE.onnx`` → the graph, ``FILE.masks.safetensors`` and ``FILE.recipe.json``; ExportError otherwise."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"output {str(out)!r} must end in .onnx for an ONNX model (its masked graph)")
    stem = out.with_suffix("")
    return ExportedFiles(out, Path(f"{stem}.masks.safetensors"), Path(f"{stem}.recipe.json"))


def export_masked_onnx(onnx_model: OnnxModel, masks: Mapping[str, Tensor], recipe: Mapping[str, Any],
                       out: str | os.PathLike, input_shape: tuple[int, ...]) -> ExportedFiles:
    """Write the masked graph to ``out`` (.onnx) with its masks and recipe: all three or none."""
    paths = onnx_export_paths(out)
    graph = masked_onnx_bytes(onnx_model, masks, input_shape)
    write_atomically(
        {
            paths.checkpoint: graph,
            paths.masks: serialize_tensors({name: keep.to(torch.bool) for name, keep in masks.items()}, "safetensors"),
            paths.recipe: recipe_json(recipe).encode(),
        }
    )
    return paths
