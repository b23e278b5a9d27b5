"""Read checkpoints safely and load them strictly: state_dict files, weight checks.

Checkpoints are read with ``torch.load(..., weights_only=True)`` or safetensors only, so no code
in an uploaded file ever runs. Every failure is a ModelLoadError whose message names the problem.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from ..errors import ModelLoadError

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "read_state_dict",
    "check_finite",
    "load_weights",
    "state_dict_mismatch",
]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


def read_state_dict(source: str | os.PathLike | bytes, filename: str | None = None) -> dict[str, Tensor]:
    """Read a state_dict from a file path or uploaded bytes without running any code in it.

    ``filename`` names the upload (its suffix picks the format). Wrapped checkpoints
    (``{"state_dict": …}``, ``{"model": …}``) and DataParallel ``module.`` prefixes are unwrapped.
    Raises ModelLoadError for a missing, empty, truncated, non-checkpoint or code-carrying file.
    """
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), filename or "upload"
    else:
        path = Path(source)
        name = filename or path.name
        if not path.is_file():
            raise ModelLoadError(f"checkpoint {str(path)!r} does not exist or is not a file")
        data = path.read_bytes()
    if not data:
        raise ModelLoadError(f"{name}: the file is empty")
    if name.lower().endswith(".safetensors"):
        loaded = _read_safetensors(data, name)
    else:
        loaded = _read_torch_pickle(data, name)
    return _unwrap(loaded, name)


def _read_safetensors(data: bytes, name: str) -> dict:
    from safetensors.torch import load as load_safetensors

    try:
        return load_safetensors(data)
    except Exception as exc:  # SafetensorError is not importable in every version
        raise ModelLoadError(f"{name}: not a valid safetensors file ({str(exc)[:160]})") from exc


def _read_torch_pickle(data: bytes, name: str) -> object:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler says "Unsupported global" for classes and functions it will
        # not construct (the code-carrying case); other failures are bytes that are no pickle.
        if not data.startswith(b"PK") and data[:1] == b"\x80":
            # A bare pickle (protocol 2+), not torch.save's zip archive: refused unread.
            raise ModelLoadError(
                f"{name}: refused to load: a plain Python pickle, not a PyTorch checkpoint; pickles can "
                "run code when loaded, so it was not unpickled. Save and upload the weights instead: "
                "torch.save(model.state_dict(), 'model.pt')"
            ) from exc
        if "global" not in str(exc).lower():
            raise ModelLoadError(f"{name}: not a readable PyTorch checkpoint (truncated, or another kind of file)") from exc
        raise ModelLoadError(
            f"{name}: refused to load: the file holds Python objects other than tensors, which could "
            "run code when unpickled (a whole pickled nn.Module, or custom classes), so it was not "
            "unpickled. Save and upload the weights instead: torch.save(model.state_dict(), 'model.pt')"
        ) from exc
    except (EOFError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"{name}: the file is truncated or not a PyTorch checkpoint") from exc
    except RuntimeError as exc:
        raise ModelLoadError(f"{name}: not a readable PyTorch checkpoint (truncated or another format)") from exc
    except Exception as exc:  # anything else a malformed file can raise inside the unpickler
        raise ModelLoadError(f"{name}: not a readable PyTorch checkpoint ({type(exc).__name__})") from exc


def _unwrap(loaded: object, name: str) -> dict[str, Tensor]:
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise ModelLoadError(f"{name}: expected a state_dict (a dict of tensors), found {type(loaded).__name__}")
    not_tensors = [str(k) for k, v in loaded.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise ModelLoadError(f"{name}: not a state_dict: entries {', '.join(not_tensors[:5])} are not tensors")
    state = {str(k): v for k, v in loaded.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def check_finite(state: Mapping[str, Tensor], what: str = "checkpoint") -> None:
    """Raise ModelLoadError naming the tensors that hold NaN or Inf values."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelLoadError(f"{what}: tensors {', '.join(bad[:5])} contain NaN or Inf values")


def state_dict_mismatch(model: nn.Module, state: Mapping[str, Tensor]) -> str | None:
    """A message naming missing, unexpected and mis-shaped keys, or None when ``state`` fits ``model``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or misshaped):
        return None
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes (file vs model)", misshaped)):
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            parts.append(f"{label}: {', '.join(keys[:5])}{more}")
    return "; ".join(parts)


def load_weights(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """Load ``state`` strictly into ``model`` after checking keys, shapes and finiteness."""
    mismatch = state_dict_mismatch(model, state)
    if mismatch:
        raise ModelLoadError(f"the weights do not fit this architecture: {mismatch}")
    check_finite(state)
    model.load_state_dict(state, strict=True)
    return model
