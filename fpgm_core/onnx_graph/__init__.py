"""ONNX graphs as FPGM models: read safely, pruned from their initializers, exported as masked ``.onnx``.

Design. The rest of the engine and the dashboard work on an ``nn.Module`` (layers, scores, plans,
recipes, FLOP counts, evaluation, slimming). An ONNX file is made to look like any other model
there, in one of two ways, and keeps its own graph for the one thing only ONNX can give back — a
masked ``.onnx`` of the user's own file:

* **Converted** (:mod:`.conversion`): onnx2torch turns the graph into an ``fx.GraphModule`` of
  real torch layers, checked against onnxruntime before it is used. Everything works on it,
  slimming and evaluation included.
* **Initializer view** (:mod:`.view`), when onnx2torch lacks an op: an ``nn.Module`` whose torch
  layers hold the Conv/Gemm (and BatchNorm) initializers as parameters and whose ``forward`` runs
  the graph in onnxruntime with those parameters, replaying each layer on its real input so FLOP
  counters and forward hooks see it. Scores, heatmaps, plans, recipes, FLOP counts, the masked
  export and even evaluation work; slimming (which needs the graph in PyTorch) says which op
  blocked the conversion.

Either way the :class:`.OnnxModel` record (on ``LoadedModel.onnx``) holds the file's bytes, the
graph analysis (:mod:`.analysis`: prunable layers, the BatchNorm right after each, output layers,
folded-BatchNorm evidence) and the map from the module's layer names to the graph's nodes. The
masked export (:mod:`.masked`) edits a copy of the file's graph through that map — the filters
and a directly following BatchNormalization's scale and bias — and checks in onnxruntime that
every pruned channel is exactly zero. Only protobuf parsing ever touches an uploaded file: no code
in it runs (:mod:`.reading`).
"""

from .analysis import PRUNABLE_OPS, FoldedBatchNorm, GraphAnalysis, OnnxLayer, analyse_graph
from .conversion import ONNX2TORCH_MAX_OPSET, Conversion, convert_graph
from .masked import check_masked_graph, export_masked_onnx, masked_graph, masked_onnx_bytes, onnx_export_paths
from .model import FoldedBatchNormWarning, OnnxModel, OnnxNotConvertedWarning, declared_input, resolve_input_shape
from .reading import external_data_files, inline_external_data, read_onnx
from .view import InitializerView

__all__ = [
    "PRUNABLE_OPS",
    "ONNX2TORCH_MAX_OPSET",
    "OnnxLayer",
    "FoldedBatchNorm",
    "GraphAnalysis",
    "analyse_graph",
    "Conversion",
    "convert_graph",
    "OnnxModel",
    "FoldedBatchNormWarning",
    "OnnxNotConvertedWarning",
    "declared_input",
    "resolve_input_shape",
    "read_onnx",
    "external_data_files",
    "inline_external_data",
    "InitializerView",
    "masked_graph",
    "check_masked_graph",
    "masked_onnx_bytes",
    "onnx_export_paths",
    "export_masked_onnx",
]
