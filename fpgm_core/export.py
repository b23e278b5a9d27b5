"""Write masked checkpoints, their masks and recipe: whole or not at all.

The checkpoint is the masked model's plain state_dict, as ``torch.save`` (.pt/.pth) or safetensors,
and loads with ``load_state_dict(strict=True)`` into the unmodified architecture. Beside it go
``<stem>.masks.<ext>`` (layer name → bool keep-mask) and ``<stem>.recipe.json``.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .errors import ExportError
from .masking import apply_masks, verify_masked
from .recipe import recipe_json

__all__ = [
    "EXPORT_FORMATS",
    "ExportedFiles",
    "export_paths",
    "serialize_tensors",
    "write_atomically",
    "verified_masked_state",
    "export_masked",
]

EXPORT_FORMATS = (".pt", ".pth", ".safetensors")


def _file_mode() -> int:
    # mkstemp creates 0600 files; exports get the permissions a plain open() would give.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@dataclass(frozen=True)
class ExportedFiles:
    """Where an export wrote its three files."""

    checkpoint: Path
    masks: Path
    recipe: Path

    def to_dict(self) -> dict[str, str]:
        """Paths as strings, for JSON."""
        return {"checkpoint": str(self.checkpoint), "masks": str(self.masks), "recipe": str(self.recipe)}


def export_paths(out: str | os.PathLike) -> ExportedFiles:
    """The checkpoint, masks and recipe paths for an output name; ExportError for a bad suffix."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise ExportError(f"output {str(out)!r} must end in .pt, .pth or .safetensors")
    stem = out.with_suffix("")
    return ExportedFiles(out, Path(f"{stem}.masks{suffix}"), Path(f"{stem}.recipe.json"))


def serialize_tensors(tensors: Mapping[str, Tensor], fmt: str) -> bytes:
    """A dict of tensors as the bytes of a ``.pt`` (torch.save) or ``.safetensors`` file."""
    # Tensors are copied to CPU, contiguous and unshared: safetensors refuses shared storage
    # (tied weights) and a strict load needs every key present.
    plain = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
    if fmt.lower().lstrip(".") == "safetensors":
        from safetensors.torch import save as save_safetensors

        return save_safetensors(plain)
    buffer = io.BytesIO()
    torch.save(plain, buffer)
    return buffer.getvalue()


def write_atomically(files: Mapping[Path, bytes]) -> None:
    """Write every file or none: all go to temporary files first, then are renamed into place."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((Path(temp), path))
            os.fchmod(handle, _file_mode())
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        for temp, path in staged:
            os.replace(temp, path)
    except OSError as exc:
        raise ExportError(f"could not write {', '.join(str(p) for p in files)}: {exc}") from exc
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)


def verified_masked_state(
    model: nn.Module, masks: Mapping[str, Tensor], *, input_shape: tuple[int, ...] | None = None
) -> dict[str, Tensor]:
    """The state_dict of ``model`` masked by ``masks``, after :func:`~fpgm_core.masking.verify_masked` confirmed it.

    What every masked export serialises (the CLI's files and the dashboard's downloads): a
    MaskCheckError (an ExportError) is raised instead if any pruned channel is not exactly zero.
    """
    masked = apply_masks(model, masks)
    verify_masked(masked, masks, input_shape)
    return masked.state_dict()


def export_masked(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    recipe: Mapping[str, Any],
    out: str | os.PathLike,
    *,
    input_shape: tuple[int, ...] | None = None,
) -> ExportedFiles:
    """Write the masked state_dict of ``model`` to ``out`` with its masks and recipe beside it.

    ``model`` is not modified. Nothing is written unless all three files can be, and unless a
    forward pass on ``input_shape`` (or the shape the model declares) confirms that every pruned
    channel is exactly zero after its layer and its norm (:func:`verified_masked_state`).
    """
    paths = export_paths(out)
    fmt = paths.checkpoint.suffix
    state = verified_masked_state(model, masks, input_shape=input_shape)
    write_atomically(
        {
            paths.checkpoint: serialize_tensors(state, fmt),
            paths.masks: serialize_tensors({name: keep.to(torch.bool) for name, keep in masks.items()}, fmt),
            paths.recipe: recipe_json(recipe).encode(),
        }
    )
    return paths
