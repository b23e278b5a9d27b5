"""The ONNX side of a loaded model: the file, what is prunable in it, and whether it converted."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import FpgmWarning, ModelLoadError
from .analysis import GraphAnalysis
from .reading import graph_inputs

__all__ = ["OnnxModel", "FoldedBatchNormWarning", "OnnxNotConvertedWarning", "declared_input", "resolve_input_shape"]

# Spatial size assumed for an image input whose height and width the graph leaves open.
_DEFAULT_IMAGE_SIZE = 224


class FoldedBatchNormWarning(FpgmWarning):
    """The ONNX graph's BatchNorms look folded into its Convs: masks are of the folded filters."""


class OnnxNotConvertedWarning(FpgmWarning):
    """The ONNX graph did not convert to PyTorch: plans and the masked .onnx export work, slimming does not."""


@dataclass(frozen=True, eq=False)
class OnnxModel:
    """An ONNX file as the engine uses it.

    ``data`` is the file as given; the masked export edits a copy of it. ``layer_outputs`` maps
    each prunable layer of the loaded ``nn.Module`` (converted or view) to the ONNX value its
    node outputs, which names the node. ``reason`` says why the graph did not convert (None when
    it did). ``constants`` maps value names to the TensorProtos they always hold (initializers and
    folded constants). Immutable and shared, never copied (a model holding it may be deep-copied).
    """

    data: bytes = field(repr=False)
    filename: str
    analysis: GraphAnalysis
    converted: bool
    reason: str | None
    layer_outputs: Mapping[str, str]
    constants: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @functools.cached_property
    def proto(self):
        """The parsed ModelProto (parsed once; treat as read-only)."""
        import onnx

        return onnx.load_model_from_string(self.data)

    def layer_of(self, name: str):
        """The ONNX layer behind the loaded model's prunable layer ``name``."""
        output = self.layer_outputs.get(name)
        if output is None:
            raise ModelLoadError(f"layer {name!r} has no node in {self.filename}")
        return next(layer for layer in self.analysis.layers if layer.output == output)

    def status(self) -> str:
        """One line: converted (what works) or not (which op, what still works)."""
        if self.converted:
            return ("converted to PyTorch by onnx2torch and checked against onnxruntime: scores, plans, the masked "
                    ".onnx export, slimming and evaluation all work")
        return (f"not converted to PyTorch ({self.reason}); scores, heatmaps, plans and the masked .onnx export read the "
                "graph's Conv/Gemm initializers directly; slimming needs a converted graph")

    def __deepcopy__(self, memo) -> "OnnxModel":
        return self

    def __reduce__(self):
        raise TypeError("OnnxModel is not picklable: keep its file bytes instead")


def declared_input(model):
    """(name, dims with None for open ones, numpy dtype) of the graph's single input; ModelLoadError otherwise."""
    from .runtime import input_dtype

    inputs = graph_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs)
        raise ModelLoadError(f"the graph has {len(inputs)} inputs ({names}); only single-input models are supported")
    value = inputs[0]
    dims = []
    for dim in value.type.tensor_type.shape.dim:
        dims.append(int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None)
    return value.name, tuple(dims), input_dtype(value)


def resolve_input_shape(model, given: tuple[int, ...] | None) -> tuple[tuple[int, ...], str | None]:
    """The input shape to use and a notice when part of it was assumed.

    ``given`` must match the graph's rank and its fixed dimensions. Otherwise an open batch becomes
    1, and open height and width of a 4-D image input become 224 (said in the notice).
    """
    name, dims, _ = declared_input(model)
    if given is not None:
        if dims and len(given) != len(dims):
            raise ModelLoadError(f"input shape {given} has {len(given)} dimensions; the graph's input {name!r} has {len(dims)}")
        for index, (want, have) in enumerate(zip(dims, given)):
            if want is not None and want != have and index > 0:
                raise ModelLoadError(f"input shape {given}: dimension {index} of the graph's input {name!r} is fixed at {want}")
        return tuple(given), None
    if not dims:
        raise ModelLoadError(f"the graph's input {name!r} has no declared shape: give the input shape (e.g. 1,3,224,224)")
    shape = [dims[0] or 1, *dims[1:]]
    open_rest = [index for index, dim in enumerate(shape) if dim is None]
    if not open_rest:
        return tuple(shape), None
    if len(shape) == 4 and open_rest in ([2, 3], [2], [3]) and shape[1] is not None:
        shape = [dim if dim is not None else _DEFAULT_IMAGE_SIZE for dim in shape]
        return tuple(shape), (f"the graph leaves the image size open; using {shape[2]}×{shape[3]} "
                              "(give another input shape to change it)")
    raise ModelLoadError(f"the graph's input {name!r} has open dimensions {dims}: give the input shape (e.g. 1,3,224,224)")
