"""Convert an ONNX graph to a PyTorch module with onnx2torch, checked against onnxruntime.

onnx2torch has converters for the classic exporter's ops up to opset 17. Exporters today write
opset 18–20, and the same graph often converts once a few semantics-preserving steps remove what
onnx2torch trips on, so the graph is prepared on a copy first:

1. constants folded by onnxscript's constant folder (``Constant``/``Shape``/``Identity`` chains
   become initializers; no other rewrite, so a kept BatchNorm stays unfolded);
2. ``Reshape(allowzero=1)`` becomes ``allowzero=0`` where its shape is a constant without zeros
   (the two then mean the same; onnx2torch implements only the latter);
3. graphs above opset 17 are converted down to 17 by onnx's version converter (tried first; the
   graph at its own opset is tried second).

Whatever converts is then run beside onnxruntime on a random input; only if the outputs agree
(within 1e-4 of the largest output) is it used. Otherwise, or when onnx2torch lacks an op, the
reason names the op and the caller falls back to the initializer view.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..layers import PRUNABLE_TYPES
from ..tracing import MODEL_LOCK
from .analysis import GraphAnalysis, constant_sources
from .model import declared_input
from .runtime import inference_session, run

__all__ = ["ONNX2TORCH_MAX_OPSET", "Conversion", "convert_graph", "prepare_for_conversion"]

ONNX2TORCH_MAX_OPSET = 17
_TOLERANCE = 1e-4
_MISSING_CONVERTER = re.compile(r"operation_type='([^']+)', version=(\d+)")


@dataclass(frozen=True)
class Conversion:
    """The converted module (None when it failed), why not, and each prunable layer's ONNX output value."""

    module: nn.Module | None
    reason: str | None
    layer_outputs: Mapping[str, str]


def _opset(model) -> int:
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)


def _fix_allowzero(model) -> None:
    sources = constant_sources(model.graph)
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in sources:
            continue
        from onnx import numpy_helper

        shape = numpy_helper.to_array(sources[node.input[1]])
        if 0 in shape.tolist():
            continue
        for attribute in node.attribute:
            if attribute.name == "allowzero":
                attribute.i = 0


def prepare_for_conversion(model) -> list:
    """Prepared copies of ``model`` to try converting, in order (see the module doc)."""
    import onnx
    from onnx import version_converter

    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    try:
        from onnxscript import optimizer

        optimizer.fold_constants(prepared)
        optimizer.remove_unused_nodes(prepared)
    except Exception:  # folding is an aid only: an unusual graph converts or fails as it is
        prepared.CopyFrom(model)
    _fix_allowzero(prepared)
    candidates = []
    if _opset(prepared) > ONNX2TORCH_MAX_OPSET:
        try:
            candidates.append(version_converter.convert_version(prepared, ONNX2TORCH_MAX_OPSET))
        except Exception:  # no down-conversion adapter for some op: try the graph's own opset
            pass
    candidates.append(prepared)
    return candidates


def _describe(exc: Exception) -> str:
    text = str(exc)
    match = _MISSING_CONVERTER.search(text)
    if match:
        return f"onnx2torch has no converter for {match.group(1)} (opset {match.group(2)})"
    return f"onnx2torch cannot convert it: {type(exc).__name__}: {text[:200]}"


def _layer_outputs(module: nn.Module, analysis: GraphAnalysis) -> dict[str, str] | str:
    """Each prunable torch layer → the ONNX output value of its node; a reason string if one has none."""
    known = {layer.output for layer in analysis.layers}
    found: dict[str, str] = {}
    for name, layer in module.named_modules():
        if not isinstance(layer, PRUNABLE_TYPES):
            continue
        top = module.get_submodule(name.split(".", 1)[0])  # a padded Conv converts to Sequential(pad, conv)
        mapping = getattr(top, "onnx_mapping", None)
        output = mapping.outputs[0] if mapping is not None and mapping.outputs else None
        if output not in known:
            return f"its layer {name} has no stored weight in the file to mask"
        found[name] = output
    return found


def _check(module: nn.Module, model, input_shape: tuple[int, ...]) -> str | None:
    """None when ``module`` computes what onnxruntime computes from ``model``; else the difference."""
    name, _, dtype = declared_input(model)
    generator = np.random.default_rng(0)
    sample = generator.standard_normal(input_shape).astype(dtype)
    expected = list(run(inference_session(model), {name: sample}).values())
    # Another session's fx trace patches nn.Module calls process-wide: forward passes hold the lock.
    with MODEL_LOCK, torch.no_grad():
        got = module(torch.from_numpy(sample))
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    if len(got) != len(expected):
        return f"the converted module returns {len(got)} outputs, the graph {len(expected)}"
    for ours, theirs in zip(got, expected):
        ours = ours.detach().cpu().numpy()
        if ours.shape != theirs.shape:
            return f"the converted module's output has shape {ours.shape}, onnxruntime's {theirs.shape}"
        scale = max(float(np.abs(theirs).max(initial=0.0)), 1.0)
        diff = float(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)).max(initial=0.0))
        if not diff <= _TOLERANCE * scale:
            return f"the converted module's outputs differ from onnxruntime's by {diff:.3g}"
    return None


def convert_graph(model, analysis: GraphAnalysis, input_shape: tuple[int, ...]) -> Conversion:
    """onnx2torch's module of ``model`` in eval mode, checked against onnxruntime, or the reason it is not usable."""
    import warnings

    from onnx2torch import convert

    reasons: list[str] = []
    for candidate in prepare_for_conversion(model):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # onnx2torch warns about every op it approximates
                module = convert(candidate, attach_onnx_mapping=True).eval()
        except Exception as exc:  # NotImplementedError for missing ops, KeyError/ValueError for odd graphs
            reasons.append(_describe(exc))
            continue
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        outputs = _layer_outputs(module, analysis)
        if isinstance(outputs, str):
            reasons.append(f"the converted module cannot be mapped back to the graph: {outputs}")
            continue
        try:
            problem = _check(module, model, input_shape)
        except Exception as exc:  # the converted module may fail on the input the graph accepts
            problem = f"the converted module fails on the graph's input: {type(exc).__name__}: {str(exc)[:160]}"
        if problem is None:
            return Conversion(module, None, outputs)
        reasons.append(problem)
    return Conversion(None, reasons[0] if reasons else "nothing to convert", {})
