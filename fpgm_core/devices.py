"""Turn a user's device string into a ``torch.device`` with a clear error when it is not present."""

from __future__ import annotations

import torch

from .errors import FpgmError

__all__ = ["resolve_device", "available_devices"]


def available_devices() -> list[str]:
    """Devices present on this machine, CPU first: ``["cpu", "cuda:0", ..., "mps"]``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return the device to compute on: ``device`` checked, or CUDA when present, else CPU.

    Raises:
        FpgmError: the string is not a device, or that device is not present here.
    """
    if device is None:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise FpgmError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise FpgmError(f"device {device!r} asked for, but CUDA is not available on this machine")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise FpgmError(
                f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif resolved.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise FpgmError(f"device {device!r} asked for, but MPS is not available on this machine")
    elif resolved.type != "cpu":
        raise FpgmError(f"unsupported device {device!r}: use cpu, cuda, cuda:N or mps")
    return resolved
