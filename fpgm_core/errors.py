"""Error types the engine raises for bad input, so callers can show a message, not a traceback."""

from __future__ import annotations

__all__ = ["FpgmError", "ModelLoadError", "PlanError", "ExportError"]


class FpgmError(ValueError):
    """Base class for every user-facing error of fpgm_core; its message names the problem."""


class ModelLoadError(FpgmError):
    """A model, architecture or checkpoint could not be loaded."""


class PlanError(FpgmError):
    """A sparsity, metric, layer name or recipe is invalid."""


class ExportError(FpgmError):
    """An export could not be written; nothing was left behind."""
