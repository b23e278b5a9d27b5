"""Read an uploaded model file into a state_dict without running any code it carries.

Three kinds of file are accepted:

* a ``state_dict`` (``.pt``/``.pth`` via ``torch.load(weights_only=True)``, or ``.safetensors``),
  read by ``fpgm_core.read_state_dict``, which refuses pickled modules and custom classes;
* a TorchScript archive (``torch.jit.save``). ``torch.jit.load`` would run the archive's
  TorchScript (its ``__setstate__`` methods) while loading, so instead its ``data.pkl`` is read
  by a restricted unpickler that knows only tensors, storages and plain containers, and every
  scripted object becomes an inert record of its attributes;
* a ``torch.export`` program (``.pt2``). ``torch.export.load`` may unpickle with
  ``weights_only=False``, so its weights are read from the archive's JSON weight table and raw
  tensor payloads instead; pickled payloads go through ``torch.load(weights_only=True)``.

Either way only the weights are kept; they are loaded into a chosen architecture, where
``fpgm_core.state_dict_mismatch`` names any keys that do not fit.

An ``.onnx`` file is a model of its own (graph and weights): it needs no architecture and is
built by ``fpgm_core.models.onnx`` from its protobuf, which runs no code (:func:`is_onnx_upload`).

The three weight formats are zip archives (a ``.pt`` state_dict too). An archive is inflated in memory, so a
small deflate bomb could fill the shared server: before anything reads one, its entries are
counted and every compressed entry is inflated in chunks with the total bounded, as
``fpgm_core.evaluation.extract_zip`` bounds image zips (:func:`check_archive`).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fpgm_core import ModelLoadError, build_model, read_state_dict, state_dict_mismatch

__all__ = [
    "UPLOAD_TYPES", "MAX_ARCHIVE_ENTRIES", "MAX_INFLATED_BYTES", "UploadedWeights", "digest_of", "read_upload",
    "check_fits", "check_archive", "is_onnx_upload",
]

UPLOAD_TYPES = ["pt", "pth", "safetensors", "pt2", "onnx"]

# The bounds of fpgm_core.evaluation's image zips: a model archive has one entry per tensor
# (thousands at most) and is stored uncompressed by torch, so its size is the upload's (≤ 200 MB).
MAX_ARCHIVE_ENTRIES = 20_000
MAX_INFLATED_BYTES = 1 << 30

FORMAT_LABELS = {"state_dict": "state_dict", "torchscript": "TorchScript module", "export": "torch.export program"}


@dataclass(frozen=True)
class UploadedWeights:
    """The tensors read from an upload, and which kind of file they came from."""

    state: dict[str, Tensor]
    format: str  # "state_dict", "torchscript" or "export"
    filename: str


def digest_of(data: bytes) -> str:
    """SHA-256 of an upload, the part of its identity that tells two uploads apart."""
    return hashlib.sha256(data).hexdigest()


def read_upload(data: bytes, filename: str) -> UploadedWeights:
    """The weights of an uploaded file; ModelLoadError (with what to upload instead) otherwise."""
    if not data:
        raise ModelLoadError(f"{filename}: the file is empty")
    archive = _open_zip(data, filename)
    names = archive.namelist() if archive is not None else []
    if filename.lower().endswith(".pt2") or any(name.endswith("model_weights_config.json") for name in names):
        if archive is None:
            raise ModelLoadError(f"{filename}: not a torch.export archive (a .pt2 file is a zip written by torch.export.save)")
        return UploadedWeights(_read_export_weights(archive, filename), "export", filename)
    if any(name.endswith("/constants.pkl") for name in names):
        return UploadedWeights(_read_torchscript_weights(archive, filename), "torchscript", filename)
    return UploadedWeights(read_state_dict(data, filename), "state_dict", filename)


def is_onnx_upload(filename: str) -> bool:
    """Whether an upload is an ONNX model (by its name): a model of its own, with no architecture to choose."""
    return filename.lower().endswith(".onnx")


def check_fits(state: dict[str, Tensor], arch: str, input_shape: tuple[int, ...] = ()) -> None:
    """Raise ModelLoadError naming the mismatched keys unless ``state`` fits ``arch`` exactly.

    The architecture is built on the meta device (shapes only, no memory, no init time) when
    possible; a few torchvision builders compute on real tensors and are built normally. A model
    factory must be one the server was started with (:func:`dashboard.sources.configured_factories`).
    """
    from fpgm_core.models import source_kind

    from .sources import ModelSource, build_architecture

    source = ModelSource("upload", arch, "", input_shape=tuple(input_shape))
    if source_kind(arch) == "factory":
        skeleton = build_architecture(source).model  # the user's own code: built as it is, not on meta
    else:
        try:
            with torch.device("meta"):
                skeleton = build_model(arch, "none").model
        except ModelLoadError:
            raise
        except Exception:  # builders that need real values (e.g. regnet) cannot run on meta
            skeleton = build_model(arch, "none").model
    mismatch = state_dict_mismatch(skeleton, state)
    if mismatch:
        raise ModelLoadError(f"the uploaded weights do not fit {arch}: {mismatch}")


def check_archive(archive: zipfile.ZipFile, filename: str) -> None:
    """Raise ModelLoadError unless ``archive`` has at most MAX_ARCHIVE_ENTRIES entries and inflates
    to at most MAX_INFLATED_BYTES, counting the bytes actually inflated, not the sizes headers claim.

    Stored entries (what torch writes) are their own size; compressed ones are inflated here in
    1 MB chunks, so a bomb is stopped one chunk past the bound.
    """
    entries = archive.infolist()
    if len(entries) > MAX_ARCHIVE_ENTRIES:
        raise ModelLoadError(f"{filename}: the archive has {len(entries):,} entries; at most {MAX_ARCHIVE_ENTRIES:,} are read")
    total = 0
    limit = f"{filename}: the archive inflates to more than {MAX_INFLATED_BYTES >> 20} MB, so it was not read"
    for entry in entries:
        if entry.compress_type == zipfile.ZIP_STORED:
            total += entry.compress_size
            if total > MAX_INFLATED_BYTES:
                raise ModelLoadError(limit)
            continue
        try:
            with archive.open(entry) as member:
                while chunk := member.read(1 << 20):
                    total += len(chunk)
                    if total > MAX_INFLATED_BYTES:
                        raise ModelLoadError(limit)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, zlib.error) as exc:
            raise ModelLoadError(f"{filename}: archive entry {entry.filename!r} cannot be read ({exc})") from exc


def _open_zip(data: bytes, filename: str) -> zipfile.ZipFile | None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return None
    check_archive(archive, filename)
    return archive


# --- TorchScript -------------------------------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Inert stand-in for a scripted module or class: it only keeps the state it was given."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def _identity_list(items: Any, *_: Any) -> list:
    return list(items)


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch.jit._pickle", "build_intlist"): _identity_list,
    ("torch.jit._pickle", "build_doublelist"): _identity_list,
    ("torch.jit._pickle", "build_boollist"): _identity_list,
    ("torch.jit._pickle", "build_tensorlist"): _identity_list,
    ("torch.jit._pickle", "build_strlist"): _identity_list,
    ("torch.jit._pickle", "restore_type_tag"): lambda value, *_: value,
}


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl`` with no callable other than the few above."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, filename: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive, self._root, self._filename = archive, root, filename

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__.") or module == "__torch__":
            return type(name, (_ScriptObject,), {})
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a TorchScript archive read for its weights")

    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        dtype, key = pid[1], str(pid[2])
        raw = bytearray(self._archive.read(f"{self._root}data/{key}"))
        if not raw:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(raw, dtype=dtype)


def _read_torchscript_weights(archive: zipfile.ZipFile, filename: str) -> dict[str, Tensor]:
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
    if not pickles:
        raise ModelLoadError(f"{filename}: a TorchScript archive without data.pkl: the file is incomplete")
    root = pickles[0][: -len("data.pkl")]
    try:
        top = _TorchScriptUnpickler(archive.read(pickles[0]), archive, root, filename).load()
    except (pickle.UnpicklingError, KeyError, EOFError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelLoadError(
            f"{filename}: this TorchScript archive holds more than modules and tensors ({str(exc)[:160]}), "
            "so it was not read. Upload the weights instead: torch.save(model.state_dict(), 'model.pt')"
        ) from exc
    state: dict[str, Tensor] = {}
    _collect_tensors(top, "", state, set())
    if not state:
        raise ModelLoadError(f"{filename}: the TorchScript module holds no tensors")
    return {name: tensor.clone() for name, tensor in state.items()}


def _collect_tensors(obj: Any, prefix: str, out: dict[str, Tensor], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    attributes = obj.state if isinstance(obj, _ScriptObject) else None
    if not isinstance(attributes, dict):
        return
    for name, value in attributes.items():
        if isinstance(value, Tensor):
            out[f"{prefix}{name}"] = value
        elif isinstance(value, _ScriptObject):
            _collect_tensors(value, f"{prefix}{name}.", out, seen)


# --- torch.export (.pt2) -----------------------------------------------------------------------

# torch._export.serde.schema.ScalarType values (a stable, versioned schema).
_EXPORT_DTYPES = {
    1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64, 6: torch.float16,
    7: torch.float32, 8: torch.float64, 12: torch.bool, 13: torch.bfloat16,
}


def _as_int(value: Any) -> int:
    return int(value["as_int"]) if isinstance(value, dict) else int(value)


def _read_export_weights(archive: zipfile.ZipFile, filename: str) -> dict[str, Tensor]:
    configs = [name for name in archive.namelist() if name.endswith("/data/weights/model_weights_config.json")]
    if not configs:
        raise ModelLoadError(
            f"{filename}: no weight table (data/weights/model_weights_config.json) in this archive; "
            "write it with torch.export.save(torch.export.export(model, args), 'model.pt2')"
        )
    weights_dir = configs[0][: -len("model_weights_config.json")]
    try:
        table = json.loads(archive.read(configs[0]))["config"]
        state = {fqn: _export_tensor(archive, weights_dir, entry, filename) for fqn, entry in table.items()}
    except ModelLoadError:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelLoadError(f"{filename}: the torch.export weight table is malformed ({str(exc)[:160]})") from exc
    if not state:
        raise ModelLoadError(f"{filename}: the torch.export program holds no weights")
    return state


def _export_tensor(archive: zipfile.ZipFile, weights_dir: str, entry: dict, filename: str) -> Tensor:
    payload = archive.read(weights_dir + entry["path_name"])
    if entry.get("use_pickle"):
        return _pickled_tensor(payload, filename)
    meta = entry["tensor_meta"]
    dtype = _EXPORT_DTYPES.get(int(meta["dtype"]))
    if dtype is None:
        raise ModelLoadError(f"{filename}: weight dtype code {meta['dtype']} is not supported")
    sizes = [_as_int(s) for s in meta["sizes"]]
    strides = [_as_int(s) for s in meta["strides"]]
    offset = _as_int(meta.get("storage_offset", 0))
    flat = torch.frombuffer(bytearray(payload), dtype=dtype) if payload else torch.empty(0, dtype=dtype)
    if not sizes or 0 not in sizes:
        needed = offset + sum((size - 1) * stride for size, stride in zip(sizes, strides)) + 1
        if needed > flat.numel():
            raise ModelLoadError(f"{filename}: weight {entry['path_name']} is truncated")
    return torch.as_strided(flat, sizes, strides, offset).clone()


def _pickled_tensor(payload: bytes, filename: str) -> Tensor:
    try:
        value = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # the weights-only unpickler refuses anything but tensors
        raise ModelLoadError(
            f"{filename}: a weight in this torch.export archive is a pickled Python object, which could run "
            "code when unpickled, so the archive was not read"
        ) from exc
    if not isinstance(value, Tensor):
        raise ModelLoadError(f"{filename}: a pickled weight in this archive is not a tensor")
    return value
