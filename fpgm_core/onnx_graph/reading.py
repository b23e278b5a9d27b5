"""Read an ONNX file safely: a protobuf parsed as data, never code.

An ONNX model is a protobuf message: parsing it runs no code from the file. Two things in a file
could still reach outside it: *external data* (tensors stored in other files, named by a path the
file chooses) and graphs the checker rejects (refused). An upload must never make us read local
files, so its external tensors are taken only from files uploaded with it, matched by bare file
name, offsets and lengths checked (:func:`inline_external_data`): torch's dynamo exporter writes
``model.onnx`` plus ``model.onnx.data`` by default. A file given on the command line (trusted, like
any path the user types) may keep its tensors in external files beside it; onnx loads them from
that folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelLoadError

__all__ = ["read_onnx", "graph_inputs", "external_data_files", "inline_external_data"]


def _tensors(graph):
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for sub in attribute.graphs:
                yield from _tensors(sub)


def _external_tensors(model) -> list:
    from onnx.external_data_helper import uses_external_data

    return [tensor for tensor in _tensors(model.graph) if uses_external_data(tensor)]


def external_data_files(data: bytes) -> list[str]:
    """The external files an ONNX file's tensors name (empty for a self-contained file or bytes that are no ONNX)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # not parseable: read_onnx says so
        return []
    return list(dict.fromkeys(ExternalDataInfo(tensor).location for tensor in _external_tensors(model)))


def inline_external_data(data: bytes, files: dict[str, bytes], filename: str = "upload.onnx") -> bytes:
    """A self-contained copy of an uploaded ONNX file whose tensors live in the uploaded ``files``.

    Each external tensor's location must be a bare file name among ``files`` (no folders, no
    ``..``: nothing is ever read from this machine), and its offset and length must lie inside that
    file. ModelLoadError names the missing file otherwise.
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:
        raise ModelLoadError(f"{filename}: not an ONNX model (the protobuf does not parse)") from exc
    for tensor in _external_tensors(model):
        info = ExternalDataInfo(tensor)
        location = info.location
        if not location or location != Path(location).name or location in (".", ".."):
            raise ModelLoadError(f"{filename}: a tensor names the external file {location!r}, a path, not a file uploaded with it: refused")
        if location not in files:
            raise ModelLoadError(f"{filename}: its tensors are stored in {location}: upload that file together with it")
        blob = files[location]
        offset = int(info.offset or 0)
        length = int(info.length) if info.length else len(blob) - offset
        if offset < 0 or length < 0 or offset + length > len(blob):
            raise ModelLoadError(f"{filename}: tensor {tensor.name!r} lies outside {location} (truncated?)")
        tensor.raw_data = blob[offset:offset + length]
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    return model.SerializeToString()


def _uses_external_data(model) -> bool:
    return bool(_external_tensors(model))


def _external_locations(model) -> list[str]:
    from onnx.external_data_helper import ExternalDataInfo

    return [ExternalDataInfo(tensor).location for tensor in _external_tensors(model)]


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
            files = ", ".join(dict.fromkeys(_external_locations(model)))
            raise ModelLoadError(
                f"{name}: its tensors are stored in external files ({files}), which are never read from this machine: "
                "upload them together with it, or save one file: torch.onnx.export(..., external_data=False) or "
                "onnx.save(model, path, save_as_external_data=False)"
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
