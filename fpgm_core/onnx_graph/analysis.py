"""What FPGM sees in an ONNX graph: its prunable layers, their BatchNorms, folded BatchNorm, output layers.

A prunable layer is a ``Conv``, ``ConvTranspose`` or ``Gemm`` (``transA = 0``) node whose weight is
a stored constant: an initializer, possibly behind ``Identity`` nodes (the classic exporter
deduplicates equal tensors that way) or a ``Constant`` node. Its filters are the weight's output
channels (Conv: dim 0; ConvTranspose: dim 1 per group; Gemm: the rows of ``B``, or its columns
with ``transB = 0``). Layers are named as onnx2torch names the modules it converts them to (the
node's name with ``.`` → ``/``, or its op type; repeated names numbered), so a plan reads the same
whether the graph converted or not.

**Folded BatchNorm.** Exporters fold an eval-mode BatchNorm into the Conv before it by default
(``W·γ/σ``, a new bias). FPGM then measures distances between the folded filters, and the masks
can differ from the unfolded model's. The graph keeps no BatchNorm to say so; the exporters leave
fingerprints, which :func:`analyse_graph` reads per layer without a BatchNorm after it:

* onnxscript's rewriter (torch's dynamo exporter, ``optimize=True``) records the rule
  ``FuseBatchNormIntoConv`` in the node's metadata, and the dynamo exporter records the source
  module (``BatchNorm2d``) in ``pkg.torch.onnx.class_hierarchy``;
* torch's classic exporter names a weight it computed by folding ``onnx::Conv_<n>`` (weights it
  kept are named after the parameter, ``layer1.0.conv1.weight``);
* other tools (tf2onnx and the like) keep the BatchNorm's name in the node or tensor names
  (``…/BatchNorm/FusedBatchNormV3``, ``conv1_bn``).

No fingerprint is no proof of absence: a graph from another tool may have folded silently.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "PRUNABLE_OPS",
    "OnnxLayer",
    "FoldedBatchNorm",
    "GraphAnalysis",
    "analyse_graph",
    "constant_sources",
    "folded_constants",
    "module_names",
    "tensor_array",
]

PRUNABLE_OPS = ("Conv", "ConvTranspose", "Gemm")

_CLASSIC_FOLDED_NAME = re.compile(r"^onnx::(Conv|Gemm)_\d+$")
_BN_NAME = re.compile(r"batch_?norm|fusedbatchnorm|(^|[/_.:\-])bn\d*($|[/_.:\-])", re.IGNORECASE)


@dataclass(frozen=True)
class OnnxLayer:
    """One prunable node of the graph and the constants it reads."""

    name: str
    node_name: str
    index: int
    op_type: str
    output: str
    weight: str
    bias: str | None
    weight_shape: tuple[int, ...]
    filters: int
    groups: int
    trans_b: bool
    attributes: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    batchnorm: int | None = None
    folded: str | None = None
    is_output: bool = False


@dataclass(frozen=True)
class FoldedBatchNorm:
    """Layers whose BatchNorm looks folded into them, and the fingerprint that says so."""

    layers: tuple[str, ...]
    evidence: tuple[str, ...]
    total: int

    def message(self) -> str:
        """What the user needs to hear, with how to export without folding."""
        return (
            f"BatchNorm looks folded into {len(self.layers)} of {self.total} layers ({'; '.join(self.evidence)}): FPGM "
            "measures the folded filters W·γ/σ, so its masks can differ from the unfolded model's. To prune the "
            "filters as trained, export with BatchNorm kept: torch.onnx.export(..., dynamo=False, "
            "do_constant_folding=False), or dynamo=True with optimize=False"
        )


@dataclass(frozen=True)
class GraphAnalysis:
    """The prunable layers in graph order, and the folded-BatchNorm finding."""

    layers: tuple[OnnxLayer, ...]
    folded: FoldedBatchNorm | None
    skipped: tuple[str, ...]

    def layer(self, name: str) -> OnnxLayer:
        """The layer called ``name``."""
        return next(layer for layer in self.layers if layer.name == name)


def tensor_array(tensor) -> np.ndarray:
    """A TensorProto as a numpy array (bfloat16 and other non-numpy types widened to float32)."""
    from onnx import numpy_helper

    array = numpy_helper.to_array(tensor)
    if array.dtype.kind not in "fiub":  # ml_dtypes (bfloat16, float8): widen for numpy arithmetic
        array = array.astype(np.float32)
    return array


def constant_sources(graph) -> dict[str, Any]:
    """Value name → the TensorProto it always holds: initializers, Constant outputs, Identity chains of them."""
    sources: dict[str, Any] = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output and not node.domain:
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.HasField("t"):
                    sources[node.output[0]] = attribute.t
        elif node.op_type == "Identity" and not node.domain and node.input and node.input[0] in sources:
            sources[node.output[0]] = sources[node.input[0]]
    return sources


def folded_constants(model) -> dict[str, Any]:
    """:func:`constant_sources` plus values computed from constants alone (folded by onnxscript).

    The dynamo exporter without its optimiser computes a Conv's zero bias from the weight's shape
    (``Shape`` → ``Expand`` → ``CastLike``): a constant, though no initializer holds it. Folding
    runs on a copy; only the small tensors it computed for values of this graph are kept.
    """
    import onnx

    sources = constant_sources(model.graph)
    try:
        from onnxscript import optimizer

        folded = onnx.ModelProto()
        folded.CopyFrom(model)
        optimizer.fold_constants(folded)
    except Exception:  # folding is an aid only: without it the stored constants still count
        return sources
    produced = {value for node in model.graph.node for value in node.output}
    for name, tensor in constant_sources(folded.graph).items():
        if name in produced and name not in sources:
            own = onnx.TensorProto()  # a copy: a reference would keep the whole folded model alive
            own.CopyFrom(tensor)
            sources[name] = own
    return sources


def _attributes(node) -> dict[str, Any]:
    from onnx import helper

    return {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}


def module_names(graph) -> list[str]:
    """onnx2torch's module name of every node, in graph order (unique)."""
    from onnx2torch.onnx_graph import OnnxGraph

    counters: dict[str, int] = defaultdict(int)
    names = []
    for node in graph.node:
        base = OnnxGraph.generate_node_name(node)
        names.append(base + (f"_{counters[base]}" if counters[base] else ""))
        counters[base] += 1
    return names


def _prunable(node, sources) -> tuple[str, str | None, tuple[int, ...], int, int, bool] | None:
    """(weight, bias, weight shape, filters, groups, transB) of a prunable node, None otherwise."""
    if node.domain or node.op_type not in PRUNABLE_OPS or len(node.input) < 2:
        return None
    weight = node.input[1]
    if weight not in sources:
        return None
    shape = tuple(int(d) for d in sources[weight].dims)
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and bias not in sources:
        return None
    attributes = _attributes(node)
    if node.op_type == "Gemm":
        if attributes.get("transA", 0) or len(shape) != 2:
            return None
        trans_b = bool(attributes.get("transB", 0))
        filters = shape[0] if trans_b else shape[1]
        if bias is not None and tuple(sources[bias].dims) != (filters,):
            return None  # a broadcast bias (scalar, 2-D) is not one value per filter
        return weight, bias, shape, filters, 1, trans_b
    if len(shape) < 3:
        return None
    groups = int(attributes.get("group", 1))
    filters = shape[0] if node.op_type == "Conv" else shape[1] * groups
    return weight, bias, shape, filters, groups, False


def _following_batchnorm(layer_output: str, consumers: dict[str, list[int]], graph, sources) -> int | None:
    for index in consumers.get(layer_output, ()):
        node = graph.node[index]
        if node.op_type == "BatchNormalization" and not node.domain and node.input[0] == layer_output:
            if len(node.input) >= 5 and all(name in sources for name in node.input[1:5]):
                return index
    return None


def _folded_evidence(node, weight: str, bias: str | None) -> str | None:
    metadata = {prop.key: prop.value for prop in node.metadata_props}
    if "FuseBatchNorm" in metadata.get("pkg.onnxscript.rewriter.rule_name", ""):
        return "torch's dynamo exporter recorded onnxscript's FuseBatchNormIntoConv rewrite in the node metadata"
    if "BatchNorm" in metadata.get("pkg.torch.onnx.class_hierarchy", ""):
        return "torch's dynamo exporter recorded a BatchNorm module as the node's source"
    if bias is not None and _CLASSIC_FOLDED_NAME.match(weight):
        return "weights named onnx::Conv_<n>, as torch's classic exporter names a Conv it fused with its BatchNorm"
    if any(_BN_NAME.search(text or "") for text in (node.name, weight, bias)):
        return "the node or its weights carry a BatchNorm's name"
    return None


def _output_layers(graph, layers: dict[str, int], consumers: dict[str, list[int]]) -> set[int]:
    """Indices of prunable nodes whose output reaches a graph output without another prunable node between."""
    outputs = {value.name for value in graph.output}
    prunable = set(layers.values())
    found = set()
    for index in prunable:
        stack, seen = list(graph.node[index].output), set()
        while stack:
            value = stack.pop()
            if value in seen:
                continue
            seen.add(value)
            if value in outputs:
                found.add(index)
                break
            for consumer in consumers.get(value, ()):
                if consumer not in prunable:
                    stack.extend(graph.node[consumer].output)
    return found


def analyse_graph(model, sources: dict[str, Any] | None = None) -> GraphAnalysis:
    """The prunable layers of an ONNX ModelProto with their BatchNorms, output flags and folding evidence.

    ``sources``: the graph's constant values (default :func:`folded_constants`).
    """
    graph = model.graph
    sources = folded_constants(model) if sources is None else sources
    names = module_names(graph)
    consumers: dict[str, list[int]] = defaultdict(list)
    for index, node in enumerate(graph.node):
        for value in node.input:
            consumers[value].append(index)
    weight_users: dict[str, int] = defaultdict(int)
    for node in graph.node:
        if node.op_type in PRUNABLE_OPS and len(node.input) > 1:
            weight_users[node.input[1]] += 1
    found, skipped = [], []
    for index, node in enumerate(graph.node):
        if node.op_type not in PRUNABLE_OPS:
            continue
        described = _prunable(node, sources)
        if described is None or weight_users[node.input[1]] > 1:
            why = "its weight is shared with another layer" if described is not None else "its weight is computed, not stored"
            skipped.append(f"{names[index]} ({why})")
            continue
        found.append((index, node, described))
    indices = {names[index]: index for index, _, _ in found}
    outputs = _output_layers(graph, indices, consumers)
    layers = []
    for index, node, (weight, bias, shape, filters, groups, trans_b) in found:
        batchnorm = _following_batchnorm(node.output[0], consumers, graph, sources)
        layers.append(
            OnnxLayer(
                name=names[index], node_name=node.name, index=index, op_type=node.op_type, output=node.output[0],
                weight=weight, bias=bias, weight_shape=shape, filters=filters, groups=groups, trans_b=trans_b,
                attributes=_attributes(node), batchnorm=batchnorm,
                folded=None if batchnorm is not None else _folded_evidence(node, weight, bias),
                is_output=index in outputs,
            )
        )
    folded_layers = [layer for layer in layers if layer.folded and not layer.is_output]
    folded = None
    if folded_layers:
        evidence = tuple(dict.fromkeys(layer.folded for layer in folded_layers))
        folded = FoldedBatchNorm(tuple(layer.name for layer in folded_layers), evidence, sum(not layer.is_output for layer in layers))
    return GraphAnalysis(tuple(layers), folded, tuple(skipped))
