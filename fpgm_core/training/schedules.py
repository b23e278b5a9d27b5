"""When masks are chosen and how many filters they prune, epoch by epoch.

* ``fixed``: the plan's masks are chosen once, before the first step, and never change.
* ``per-epoch`` (the FPGM paper's training): masks are re-chosen on the current weights at the end
  of epochs. With frozen filters (the paper's code zeroes the gradients of pruned filters) they are
  re-chosen after every epoch but the last, whose masks are the result's, so the result is trained
  under its own masks. With ``regrow`` (soft filter pruning) pruned filters keep training between
  re-selections, so masks are re-chosen after the last epoch too, and that choice is the result's.
* A ramp prunes a growing fraction of the plan's counts over the first epochs: epoch e prunes
  ``round(min(1, e / ramp)·count)`` filters of a layer whose plan prunes ``count``.

The counts of the last epoch are always the plan's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .settings import FineTuneSettings

__all__ = ["MaskSchedule"]


@dataclass(frozen=True)
class MaskSchedule:
    """The mask schedule of a fine-tune, from its settings."""

    kind: str
    regrow: bool
    ramp_epochs: int
    epochs: int

    @classmethod
    def from_settings(cls, settings: FineTuneSettings) -> "MaskSchedule":
        """The schedule ``settings`` describe (validated)."""
        settings = settings.validated()
        return cls(settings.schedule, settings.regrow, settings.ramp_epochs, settings.epochs)

    @property
    def freezes(self) -> bool:
        """Whether pruned filters stay exactly zero through every step (not regrowing)."""
        return not self.regrow

    def fraction(self, epoch: int) -> float:
        """The fraction of the plan's counts pruned during ``epoch`` (1-based)."""
        if self.ramp_epochs <= 0:
            return 1.0
        return min(1.0, max(epoch, 1) / self.ramp_epochs)

    def counts(self, counts: Mapping[str, int], epoch: int) -> dict[str, int]:
        """Filters pruned per layer during ``epoch``."""
        fraction = self.fraction(epoch)
        return {name: int(count) if fraction >= 1.0 else round(fraction * count) for name, count in counts.items()}

    def reselects_after(self, epoch: int) -> bool:
        """Whether masks are re-chosen at the end of ``epoch``."""
        if self.kind != "per-epoch":
            return False
        return epoch < self.epochs or self.regrow
