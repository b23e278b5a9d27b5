"""Fine-tuning after pruning, in pure PyTorch: masked training that keeps pruned filters exactly zero.

* :mod:`.settings` — every setting of a fine-tune, validated (:class:`FineTuneSettings`).
* :mod:`.keeping` — pruned weights, bias, BatchNorm channels, gradients and optimizer state at zero.
* :mod:`.schedules` — fixed masks, per-epoch re-selection (frozen or regrowing), a sparsity ramp.
* :mod:`.selection` — the plan's counts, and masks for them chosen by a criterion on given weights.
* :mod:`.distillation` — cross-entropy, distillation from the unpruned model, or a mix.
* :mod:`.data` — the demo's training split, or a zip (train/ + val/, or a seeded stratified split).
* :mod:`.loop` — :func:`fine_tune`, with progress and stop callbacks, on CPU, CUDA or MPS.
* :mod:`.recipe` — the settings recorded in the recipe, so a fine-tune replays.
* :mod:`.slimming` — slim a fine-tuned model by its masks.
* :mod:`.sweep` — criteria × sparsities × seeds, each fine-tuned (the teaching sweep after training).
"""

from .data import DEFAULT_VAL_FRACTION, MAX_TRAINING_IMAGES, TrainingData, demo_training_data, load_training_zip, stratified_split
from .distillation import distillation_loss, training_loss
from .keeping import MaskKeeper, parameter_masks
from .loop import EpochRecord, FineTuneResult, FineTuneStopped, fine_tune
from .remote import FineTuneInputs, fine_tune_on, fine_tune_task
from .recipe import FineTuneReplayWarning, check_replay, finetune_recipe, recipe_settings
from .schedules import MaskSchedule
from .selection import resolve_counts, select_masks
from .settings import AUGMENTATIONS, LR_SCHEDULES, OPTIMIZERS, SCHEDULES, FineTuneError, FineTuneSettings
from .slimming import masks_plan, read_masks, slim_masked, unmasked_entries
from .sweep import SWEEP_CRITERIA, SWEEP_SPARSITIES, FineTunedPoint, SweepInputs, SweepPoint, finetune_point, finetuned_summary, finetuned_sweep

__all__ = [
    "FineTuneSettings",
    "FineTuneError",
    "SCHEDULES",
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "AUGMENTATIONS",
    "MaskKeeper",
    "parameter_masks",
    "MaskSchedule",
    "resolve_counts",
    "select_masks",
    "distillation_loss",
    "training_loss",
    "TrainingData",
    "MAX_TRAINING_IMAGES",
    "DEFAULT_VAL_FRACTION",
    "demo_training_data",
    "load_training_zip",
    "stratified_split",
    "EpochRecord",
    "FineTuneResult",
    "FineTuneStopped",
    "fine_tune",
    "FineTuneInputs",
    "fine_tune_task",
    "fine_tune_on",
    "FineTuneReplayWarning",
    "finetune_recipe",
    "recipe_settings",
    "check_replay",
    "read_masks",
    "masks_plan",
    "slim_masked",
    "unmasked_entries",
    "SWEEP_CRITERIA",
    "SWEEP_SPARSITIES",
    "SweepInputs",
    "SweepPoint",
    "FineTunedPoint",
    "finetune_point",
    "finetuned_sweep",
    "finetuned_summary",
]
