"""Copies of an ONNX graph with some node inputs replaced by new constant values, or more outputs.

A constant a node reads may be shared: the classic exporter deduplicates equal tensors (at random
init every BatchNorm's zero bias is one initializer, reached through ``Identity`` nodes), and a
``Constant`` node may feed several nodes. Writing into such a tensor in place would change every
node that reads it. So an initializer is edited in place only when the node is its one reader
(readers of just its shape or type, such as ``Shape`` or ``CastLike``'s second input, do not
count); otherwise the node gets its own new initializer and is rewired to it, and the old tensor
is dropped only when nothing else reads it.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["with_inputs", "with_outputs"]


def _unique(name: str, taken: set[str]) -> str:
    candidate, number = name, 0
    while candidate in taken:
        number += 1
        candidate = f"{name}__fpgm{number}"
    taken.add(candidate)
    return candidate


# (op type, input slot) of readers that use a value's shape or element type, never its numbers.
_SHAPE_ONLY_READERS = {("Shape", 0), ("Size", 0), ("CastLike", 1)}


def _value_readers(graph) -> dict[str, list[tuple[int, int]]]:
    readers: dict[str, list[tuple[int, int]]] = {}
    for index, node in enumerate(graph.node):
        for slot, name in enumerate(node.input):
            readers.setdefault(name, []).append((index, slot))
    for value in graph.output:
        readers.setdefault(value.name, []).append((-1, -1))
    return readers


def _reads_only_shape(graph, reader: tuple[int, int]) -> bool:
    index, slot = reader
    if index < 0:
        return False  # a graph output: its numbers are read
    node = graph.node[index]
    return not node.domain and (node.op_type, slot) in _SHAPE_ONLY_READERS


def with_inputs(model, replacements: Mapping[tuple[int, int], np.ndarray], sources: Mapping[str, Any]):
    """A copy of ``model`` where input ``slot`` of node ``index`` reads a new initializer holding the array.

    ``replacements`` maps (node index, input slot) → array; each array is stored in the dtype of
    the constant it replaces (``sources``: value name → TensorProto, as from ``folded_constants``).
    """
    import onnx
    from onnx import numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    taken = {tensor.name for tensor in graph.initializer}
    for node in graph.node:
        taken.update(node.output)
    taken.update(value.name for value in graph.input)
    readers = _value_readers(graph)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    targeted: dict[str, int] = {}
    for index, slot in replacements:
        name = graph.node[index].input[slot]
        targeted[name] = targeted.get(name, 0) + 1
    replaced: set[str] = set()
    for (index, slot), array in replacements.items():
        node = graph.node[index]
        old = node.input[slot]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(sources[old].data_type)
        values = np.ascontiguousarray(array).astype(dtype, copy=False)
        others = [reader for reader in readers.get(old, ()) if reader != (index, slot)]
        if old in initializers and targeted[old] == 1 and all(_reads_only_shape(graph, reader) for reader in others):
            # Read by this node alone (or for its shape or type only): edited in place, not duplicated.
            initializers[old].CopyFrom(numpy_helper.from_array(values, old))
            continue
        tensor = numpy_helper.from_array(values, _unique(f"{old}__fpgm", taken))
        graph.initializer.append(tensor)
        node.input[slot] = tensor.name
        replaced.add(old)
    still_read = {name for node in graph.node for name in node.input}
    still_read |= {value.name for value in graph.output} | {value.name for value in graph.input}
    keep = [tensor for tensor in graph.initializer if tensor.name not in replaced or tensor.name in still_read]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return copy


def with_outputs(model, names: Iterable[str]):
    """A copy of ``model`` that also outputs the intermediate values ``names`` (to read them in onnxruntime)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {value.name for value in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return copy
