"""Read an ONNX file safely: a protobuf parsed as data, never code.

An ONNX model is a protobuf message: parsing it runs no code from the file. Two things in a file
could still reach outside it, and both are refused for uploads: *external data* (tensors stored
in other files, named by a path the file chooses — an upload must not make us read local files)
and graphs the checker rejects. A file given on the command line (trusted, like any path the user
types) may keep its tensors in external files beside it; onnx loads them from that folder only.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelLoadError

__all__ = ["read_onnx", "graph_inputs"]


def _uses_external_data(model) -> bool:
    from onnx.external_data_helper import uses_external_data

    def tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    yield from tensors(attribute.g)
                for sub in attribute.graphs:
                    yield from tensors(sub)

    return any(uses_external_data(tensor) for tensor in tensors(model.graph))


def read_onnx(source: str | os.PathLike | bytes, filename: str | None = None):
    """Parse an ONNX model from uploaded bytes or a file path; returns ``(ModelProto, file bytes)``.

    Raises ModelLoadError naming the problem: an empty, truncated or non-ONNX file, a graph the
    ONNX checker rejects, or (for bytes) tensors kept in external files.
    """
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), filename or "upload.onnx"
        if not data:
            raise ModelLoadError(f"{name}: the file is empty")
        try:
            model = onnx.load_model_from_string(data)
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{name}: not an ONNX model (the protobuf does not parse: truncated, or another kind of file)") from exc
        if _uses_external_data(model):
            raise ModelLoadError(
                f"{name}: its tensors are stored in external files, which an upload cannot bring along and which "
                "are never read from this machine; save it as one file: onnx.save(model, path, save_as_external_data=False)"
            )
    else:
        path = Path(source)
        name = filename or path.name
        if not path.is_file():
            raise ModelLoadError(f"ONNX file {str(path)!r} does not exist or is not a file")
        data = path.read_bytes()
        if not data:
            raise ModelLoadError(f"{name}: the file is empty")
        try:
            model = onnx.load_model_from_string(data)
            if _uses_external_data(model):
                # A path the user named: onnx reads the external tensors from the file's own folder.
                model = onnx.load_model(str(path), load_external_data=True)
                data = model.SerializeToString()
        except (DecodeError, ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"{name}: not a readable ONNX model ({str(exc)[:160] or type(exc).__name__})") from exc
    if not model.HasField("graph") or not model.graph.node:
        raise ModelLoadError(f"{name}: not an ONNX model (no graph nodes: truncated, or another kind of file)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "invalid"
        raise ModelLoadError(f"{name}: the ONNX checker rejects this graph ({first})") from exc
    if not graph_inputs(model):
        raise ModelLoadError(f"{name}: the graph has no inputs")
    return model, data


def graph_inputs(model) -> list:
    """The graph's real inputs (ValueInfoProtos), without initializers listed as inputs by old exporters."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]
