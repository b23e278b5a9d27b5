"""Recipes: a plan resolved to exact per-layer counts, as JSON that reproduces the same masks.

A recipe records the model's identity (architecture, weights source, a fingerprint of its weights),
the metric, the plan's settings and, for every targeted layer, how many of its filters are pruned.
Replaying it on the same weights prunes the same filters: within a layer FPGM always removes the
lowest-scored ones, so the counts determine the masks.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ._version import __version__
from .errors import PlanError, RecipeMismatchWarning
from .layers import LayerInfo
from .plan import SparsityPlan
from .tracing import model_trace

__all__ = [
    "RECIPE_FORMAT",
    "model_fingerprint",
    "make_recipe",
    "plan_from_recipe",
    "read_recipe",
    "recipe_json",
    "check_recipe_fingerprint",
]

RECIPE_FORMAT = "fpgm-recipe/1"


def model_fingerprint(model: nn.Module) -> str:
    """A SHA-256 over the model's state_dict (names, dtypes, shapes, values): same weights, same print."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return "sha256:" + digest.hexdigest()


def make_recipe(
    model: nn.Module,
    plan: SparsityPlan,
    counts: Mapping[str, int],
    layers: list[LayerInfo],
    *,
    arch: str,
    weights: str,
) -> dict[str, Any]:
    """The JSON-ready recipe of ``plan`` resolved to ``counts`` on ``model``.

    ``tracing`` records how the norms after pruned layers and the output layers were found: from
    the fx data flow, or (``"data_flow": false``, with fx's error) by registration order.
    """
    plan = plan.validated()
    if callable(plan.metric):
        raise PlanError("a plan with a custom metric function cannot be saved as a recipe")
    filters = {layer.name: layer.filters for layer in layers}
    return {
        "format": RECIPE_FORMAT,
        "fpgm_core_version": __version__,
        "model": {"arch": arch, "weights": weights, "fingerprint": model_fingerprint(model)},
        "metric": plan.metric,
        "mode": plan.mode,
        "global_sparsity": plan.sparsity,
        "max_layer_sparsity": plan.max_layer_sparsity,
        "include_output": plan.include_output,
        "overrides": dict(plan.overrides),
        "tracing": model_trace(model).to_dict(),
        "layers": {
            name: {"filters": filters[name], "pruned": int(count), "sparsity": round(count / filters[name], 6)}
            for name, count in counts.items()
        },
    }


def recipe_json(recipe: Mapping[str, Any]) -> str:
    """The recipe as indented JSON text."""
    return json.dumps(recipe, indent=2, sort_keys=False) + "\n"


def read_recipe(source: str | os.PathLike | bytes) -> dict[str, Any]:
    """Parse and check a recipe file (or its bytes); PlanError names what is wrong."""
    try:
        text = source.decode() if isinstance(source, (bytes, bytearray)) else Path(source).read_text()
        recipe = json.loads(text)
    except FileNotFoundError as exc:
        raise PlanError(f"recipe {str(source)!r} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"recipe is not valid JSON ({exc})") from exc
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT:
        raise PlanError(f"not an fpgm recipe: expected \"format\": \"{RECIPE_FORMAT}\"")
    layers = recipe.get("layers")
    if not isinstance(layers, dict):
        raise PlanError("recipe has no \"layers\" table")
    for name, entry in layers.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("pruned"), int) or isinstance(entry.get("pruned"), bool):
            raise PlanError(f"recipe layer {name!r} needs an integer \"pruned\" count")
    return recipe


def plan_from_recipe(recipe: Mapping[str, Any]) -> SparsityPlan:
    """A plan that prunes exactly the recipe's per-layer counts with the recipe's metric."""
    return SparsityPlan(
        sparsity=float(recipe.get("global_sparsity", 0.0)),
        metric=str(recipe.get("metric", "l2")),
        overrides={},
        mode="uniform",
        include_output=bool(recipe.get("include_output", False)),
        counts={name: entry["pruned"] for name, entry in recipe["layers"].items()},
    ).validated()


def check_recipe_fingerprint(recipe: Mapping[str, Any], model: nn.Module) -> bool | None:
    """Whether ``recipe`` was made on ``model``'s weights; None when it records no fingerprint.

    A recipe made on other weights still replays (its per-layer counts apply, FPGM picks the
    filters from these weights), so a mismatch is a :class:`RecipeMismatchWarning`, not an error.
    """
    recorded = recipe.get("model", {}).get("fingerprint") if isinstance(recipe.get("model"), Mapping) else None
    if recorded is None:
        return None
    matches = recorded == model_fingerprint(model)
    if not matches:
        warnings.warn(
            "the recipe was made on different weights; its per-layer counts apply, and the filters follow these weights",
            RecipeMismatchWarning,
            stacklevel=2,
        )
    return matches
