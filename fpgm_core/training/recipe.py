"""A fine-tune's recipe: the plan's recipe plus, under ``"finetune"``, everything that replays the training.

``"finetune"`` holds the settings (:class:`.settings.FineTuneSettings`), a record of the data
(demo split, or the zip's SHA-256 and how it was split), the device, mixed precision and torch
thread count it ran with, the name of the masks file written beside it, and what it reached (the
final held-out figures and the fingerprint of the fine-tuned weights). The recipe's ``"model"`` is
the *unpruned* model it started from and its ``"layers"`` the plan's per-layer counts, so
``prune --recipe`` still reproduces the untrained pruned model and ``finetune --recipe`` the
fine-tuned one.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

from torch import nn

from ..errors import FpgmWarning
from ..layers import prunable_layers
from ..plan import SparsityPlan
from ..recipe import make_recipe, model_fingerprint
from .loop import FineTuneResult
from .settings import FineTuneError, FineTuneSettings

__all__ = ["FineTuneReplayWarning", "finetune_recipe", "recipe_settings", "check_replay"]


class FineTuneReplayWarning(FpgmWarning):
    """A recipe's fine-tune is replayed under other conditions (data, threads, device): weights may differ."""


def finetune_recipe(
    model: nn.Module,
    plan: SparsityPlan,
    result: FineTuneResult,
    *,
    arch: str,
    weights: str,
    masks_file: str | None = None,
) -> dict[str, Any]:
    """The JSON-ready recipe of ``result``, fine-tuned from ``model`` (the unpruned one) under ``plan``."""
    recipe = make_recipe(model, plan, result.counts, prunable_layers(model), arch=arch, weights=weights)
    if result.settings.group_consistent:
        recipe["group_consistent"] = True
    final = result.final
    recipe["finetune"] = {
        "settings": result.settings.to_dict(),
        "data": dict(result.data),
        "device": result.device,
        "amp": result.amp,
        "channels_last": result.channels_last,
        "threads": result.threads,
        "masks_file": masks_file,
        "result": {
            "fingerprint": model_fingerprint(result.model),
            "epochs": final.epoch,
            "top1": final.top1,
            "agreement": final.agreement,
            "untrained_top1": result.untrained.top1,
            "baseline_top1": None if result.baseline.top1 != result.baseline.top1 else result.baseline.top1,
        },
    }
    return recipe


def recipe_settings(recipe: Mapping[str, Any]) -> FineTuneSettings | None:
    """The fine-tune settings a recipe records, or None for a recipe of an untrained prune."""
    section = recipe.get("finetune")
    if section is None:
        return None
    if not isinstance(section, Mapping) or not isinstance(section.get("settings"), Mapping):
        raise FineTuneError('the recipe\'s "finetune" section has no "settings" table')
    return FineTuneSettings.from_dict(section["settings"])


def check_replay(recipe: Mapping[str, Any], data: Mapping[str, Any], device: str, threads: int) -> list[str]:
    """What differs between the recipe's fine-tune and a replay on ``data``/``device``/``threads``, warned each."""
    section = recipe.get("finetune") or {}
    differences = []
    recorded = section.get("data") or {}
    for key in ("kind", "sha256", "split", "split_seed", "val_fraction"):
        if key in recorded and recorded.get(key) != data.get(key):
            differences.append(f"data {key} {recorded.get(key)!r} → {data.get(key)!r}")
    if section.get("device") not in (None, device):
        differences.append(f"device {section['device']} → {device}")
    if section.get("threads") not in (None, threads):
        differences.append(f"torch threads {section['threads']} → {threads}")
    if section.get("amp"):
        differences.append(f"the recorded run used {section['amp']} mixed precision, which is not bit-reproducible")
    if differences:
        warnings.warn(
            "the fine-tune is replayed under other conditions, so its weights may differ: " + "; ".join(differences),
            FineTuneReplayWarning,
            stacklevel=2,
        )
    return differences
