"""The ONNX source: a ``.onnx`` file (a CLI path or an upload) as a model like any other.

The file is parsed as a protobuf (no code runs), analysed, and converted to PyTorch by onnx2torch
where it converts (checked against onnxruntime), else viewed through its initializers; see
:mod:`fpgm_core.onnx_graph` for the design. Two things the user must hear come as warnings and
with the record on ``LoadedModel.onnx``: folded BatchNorm (masks of folded filters) and a graph
that did not convert (slimming unavailable, the op named).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

from ..errors import ModelLoadError
from .loaded import LoadedModel, parse_input_shape

__all__ = ["is_onnx_path", "build_onnx"]


def is_onnx_path(arch: str) -> bool:
    """Whether ``arch`` names an ONNX file (ends in ``.onnx``)."""
    return str(arch).lower().endswith(".onnx")


def build_onnx(source: str | os.PathLike | bytes, filename: str | None = None, *,
               input_shape: str | Sequence[int] | None = None, convert: bool = True) -> LoadedModel:
    """An ONNX model from a path or uploaded bytes: converted to PyTorch if it can be, else the initializer view.

    Args:
        source: the ``.onnx`` file's path, or its bytes (an upload; ``filename`` names it).
        input_shape: overrides the graph's declared input shape (needed when it leaves sizes open).
        convert: False skips onnx2torch and always uses the initializer view.

    Emits FoldedBatchNormWarning and OnnxNotConvertedWarning (the dashboard shows the same from
    ``LoadedModel.onnx``); ``notice`` says where the input shape was assumed.
    """
    import numpy as np

    from ..onnx_graph import (
        FoldedBatchNormWarning,
        InitializerView,
        OnnxModel,
        OnnxNotConvertedWarning,
        analyse_graph,
        convert_graph,
        read_onnx,
        resolve_input_shape,
    )
    from ..onnx_graph.analysis import folded_constants

    name = filename or (Path(source).name if not isinstance(source, (bytes, bytearray)) else "upload.onnx")
    proto, data = read_onnx(source, name)
    sources = folded_constants(proto)
    analysis = analyse_graph(proto, sources)
    if not analysis.layers:
        skipped = f" ({'; '.join(analysis.skipped[:3])})" if analysis.skipped else ""
        raise ModelLoadError(f"{name}: the graph has no Conv, ConvTranspose or Gemm node with stored weights, so FPGM has nothing to prune{skipped}")
    from ..onnx_graph.analysis import tensor_array

    bad = [layer.name for layer in analysis.layers
           if not all(np.isfinite(tensor_array(sources[v])).all() for v in (layer.weight, layer.bias) if v)]
    if bad:
        raise ModelLoadError(f"{name}: the weights of layers {', '.join(bad[:5])} contain NaN or Inf values")
    shape, shape_notice = resolve_input_shape(proto, parse_input_shape(input_shape) if input_shape else None)
    conversion = convert_graph(proto, analysis, shape) if convert else None
    if conversion is not None and conversion.module is not None:
        record = OnnxModel(data, name, analysis, True, None, dict(conversion.layer_outputs), sources)
        module = conversion.module
    else:
        reason = conversion.reason if conversion is not None else "conversion was not asked for"
        record = OnnxModel(data, name, analysis, False, reason, {layer.name: layer.output for layer in analysis.layers}, sources)
        module = InitializerView(record)
    record.__dict__["proto"] = proto  # already parsed: spare the record a second parse
    if analysis.folded is not None:
        warnings.warn(analysis.folded.message(), FoldedBatchNormWarning, stacklevel=2)
    if not record.converted:
        warnings.warn(f"{name}: {record.status()}", OnnxNotConvertedWarning, stacklevel=2)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return LoadedModel(module.eval(), name, "default", shape, shape_notice, record)
