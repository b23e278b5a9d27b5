"""Error and warning types of the engine, so callers can show a message, not a traceback.

Errors are bad input the engine refuses. Warnings (``warnings.warn`` with an :class:`FpgmWarning`)
are results the engine still returns but the user should hear about: the CLI prints them as
``warning: …`` lines, the dashboard shows them on the page.
"""

from __future__ import annotations

__all__ = [
    "FpgmError",
    "ModelLoadError",
    "PlanError",
    "ExportError",
    "FpgmWarning",
    "RecipeMismatchWarning",
    "TracingFallbackWarning",
]


class FpgmError(ValueError):
    """Base class for every user-facing error of fpgm_core; its message names the problem."""


class ModelLoadError(FpgmError):
    """A model, architecture or checkpoint could not be loaded."""


class PlanError(FpgmError):
    """A sparsity, metric, layer name or recipe is invalid."""


class ExportError(FpgmError):
    """An export could not be written; nothing was left behind."""


class FpgmWarning(UserWarning):
    """Base class of the engine's warnings: the result stands, but the user should know something about it."""


class RecipeMismatchWarning(FpgmWarning):
    """A recipe made on other weights was replayed: its counts apply, its filters follow these weights."""


class TracingFallbackWarning(FpgmWarning):
    """torch.fx could not trace the model: its norms and output layers were guessed from registration order."""
