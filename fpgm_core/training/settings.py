"""How a pruned model is fine-tuned: every setting in one validated, JSON-ready record.

The same record drives the loop, is written into the recipe (``"finetune"``) and read back from
it, so ``finetune --recipe`` replays a fine-tune with exactly the settings that made it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, Mapping

from ..criteria import check_criterion
from ..errors import FpgmError, PlanError

__all__ = [
    "FineTuneError",
    "SCHEDULES",
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "AUGMENTATIONS",
    "FineTuneSettings",
]

SCHEDULES = ("fixed", "per-epoch")
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("onecycle", "cosine", "constant")
AUGMENTATIONS = ("auto", "none", "shift", "flip")


class FineTuneError(FpgmError):
    """A fine-tune setting is invalid, or the data and the model do not fit together."""


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or int(value) < minimum:
        raise FineTuneError(f"{name} must be a whole number ≥ {minimum}, got {value!r}")
    return int(value)


def _finite(name: str, value: Any, *, minimum: float = 0.0, strictly: bool = False, maximum: float | None = None) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise FineTuneError(f"{name} must be a number, got {value!r}") from exc
    low_ok = number > minimum if strictly else number >= minimum
    if math.isnan(number) or math.isinf(number) or not low_ok or (maximum is not None and number > maximum):
        bound = f"> {minimum:g}" if strictly else f"≥ {minimum:g}"
        upper = f" and ≤ {maximum:g}" if maximum is not None else ""
        raise FineTuneError(f"{name} must be a finite number {bound}{upper}, got {value!r}")
    return number


@dataclass(frozen=True)
class FineTuneSettings:
    """Settings of one fine-tune. ``validated()`` checks them; every field is JSON-ready.

    Attributes:
        epochs: passes over the training images.
        lr: the peak learning rate (one-cycle, cosine) or the constant one.
        batch_size: images per optimizer step.
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9, Nesterov).
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        lr_schedule: ``onecycle`` (warm-up over the first 10 % of steps, then cosine down),
            ``cosine`` (from ``lr`` down to 0) or ``constant``.
        schedule: ``fixed`` (masks chosen once, before training) or ``per-epoch`` (masks
            re-chosen at the end of every epoch, as the FPGM paper trains).
        regrow: with ``per-epoch``: pruned filters are zeroed at epoch ends but updated between
            them (soft filter pruning) instead of frozen at zero.
        ramp_epochs: with ``per-epoch``: sparsity grows linearly to the plan's over this many
            epochs (0 = the plan's sparsity from the start).
        criterion: which filters the masks prune (``fpgm-l2``, ``fpgm-l1``, ``norm-l1``,
            ``norm-l2``, ``random``); ``fpgm`` means FPGM with the plan's metric.
        group_consistent: coupled layers (residual adds, depthwise convs) lose the same channels,
            so the fine-tuned model can be slimmed.
        distill_temperature: distil from the unpruned model at this temperature (None = off).
        distill_weight: the weight of the distillation loss against cross-entropy; 1 = distillation
            alone, which needs no labels.
        augment: ``shift`` (±1 pixel, for the demo's 8×8 digits), ``flip`` (horizontal), ``none``,
            or ``auto`` (shift for the demo digits, none for other images).
        seed: seed of the batch order, the augmentation and random masks.
    """

    epochs: int = 5
    lr: float = 5e-3
    batch_size: int = 64
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 1e-4
    lr_schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    schedule: Literal["fixed", "per-epoch"] = "fixed"
    regrow: bool = False
    ramp_epochs: int = 0
    criterion: str = "fpgm"
    group_consistent: bool = False
    distill_temperature: float | None = None
    distill_weight: float = 0.5
    augment: Literal["auto", "none", "shift", "flip"] = "auto"
    seed: int = 0

    def validated(self) -> "FineTuneSettings":
        """The same settings with every value checked; FineTuneError names the first bad one."""
        epochs = _positive_int("epochs", self.epochs)
        lr = _finite("the learning rate", self.lr, strictly=True)
        batch_size = _positive_int("batch size", self.batch_size)
        weight_decay = _finite("weight decay", self.weight_decay)
        for name, value, choices in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("learning-rate schedule", self.lr_schedule, LR_SCHEDULES),
            ("mask schedule", self.schedule, SCHEDULES),
            ("augmentation", self.augment, AUGMENTATIONS),
        ):
            if value not in choices:
                raise FineTuneError(f"unknown {name} {value!r}: use one of {', '.join(choices)}")
        ramp = _positive_int("ramp epochs", self.ramp_epochs, minimum=0)
        if self.schedule == "fixed" and (self.regrow or ramp):
            raise FineTuneError("regrowing filters and a sparsity ramp re-choose masks: use the per-epoch schedule")
        if ramp > epochs:
            raise FineTuneError(f"the sparsity ramp ({ramp} epochs) must end by the last epoch ({epochs})")
        try:
            criterion = "fpgm" if self.criterion == "fpgm" else check_criterion(self.criterion)
        except PlanError as exc:
            raise FineTuneError(f"{exc} (or fpgm: FPGM with the plan's metric)") from exc
        temperature = None
        if self.distill_temperature is not None:
            temperature = _finite("the distillation temperature", self.distill_temperature, strictly=True)
        weight = _finite("the distillation weight", self.distill_weight, maximum=1.0)
        return replace(
            self, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, ramp_epochs=ramp,
            criterion=criterion, distill_temperature=temperature, distill_weight=weight, regrow=bool(self.regrow),
            group_consistent=bool(self.group_consistent), seed=int(self.seed),
        )

    @property
    def distills(self) -> bool:
        """Whether the unpruned model teaches (a distillation temperature is set)."""
        return self.distill_temperature is not None

    @property
    def needs_labels(self) -> bool:
        """False only for distillation alone (weight 1): then unlabelled images suffice."""
        return not (self.distills and self.distill_weight >= 1.0)

    def criterion_for(self, metric: str) -> str:
        """The masks' criterion, ``fpgm`` resolved to the plan's FPGM metric."""
        return f"fpgm-{metric}" if self.criterion == "fpgm" else self.criterion

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "FineTuneSettings":
        """Settings from a dict (a recipe's ``"finetune"``); unknown keys are refused by name."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FineTuneError(f"unknown fine-tune setting(s) {', '.join(unknown)}")
        return cls(**dict(values)).validated()
