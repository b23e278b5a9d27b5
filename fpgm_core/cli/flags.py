"""Flags several sub-commands share, and the adapter that turns engine checks into argparse types.

Every pruning command takes the same model flags (``--arch``/``--weights``) and plan flags
(``--sparsity``, ``--layer``, ``--recipe``, ``--metric``, ``--mode``, ``--max-layer-sparsity``);
they are defined once here so that ``prune``, ``slim`` and the evaluation commands agree.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, NamedTuple, TypeVar

from ..distance import METRICS
from ..errors import PlanError
from ..masks import check_sparsity
from ..models import LoadedModel
from ..plan import SparsityPlan
from ..recipe import check_recipe_fingerprint, plan_from_recipe, read_recipe

__all__ = [
    "argument_type",
    "parse_sparsity",
    "parse_layer_override",
    "parse_sparsity_list",
    "parse_non_negative",
    "add_model_arguments",
    "add_plan_arguments",
    "add_device_argument",
    "PlanArguments",
    "plan_from_args",
]

T = TypeVar("T")


def argument_type(check: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type`` from an engine check: its PlanError becomes argparse's usage error."""

    def parse(text: str) -> T:
        try:
            return check(text)
        except PlanError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse


def _check_layer_override(text: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise PlanError(f"expected NAME=SPARSITY, got {text!r}")
    return name, check_sparsity(value, f"sparsity for layer {name!r}")


def _check_non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise PlanError(f"expected a whole number, got {text!r}") from exc
    if value < 0:
        raise PlanError(f"expected 0 or more, got {text!r}")
    return value


parse_sparsity = argument_type(check_sparsity)
parse_layer_override = argument_type(_check_layer_override)
parse_sparsity_list = argument_type(lambda text: [check_sparsity(part) for part in text.split(",") if part.strip()])
parse_non_negative = argument_type(_check_non_negative)


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """The plan flags every pruning command shares: sparsity, per-layer overrides, recipe, metric, mode, cap."""
    parser.add_argument("--sparsity", type=parse_sparsity, help="fraction of filters to prune, 0…1")
    parser.add_argument("--layer", action="append", type=parse_layer_override, metavar="NAME=S", help="per-layer sparsity (repeatable)")
    parser.add_argument("--recipe", help="replay a recipe JSON written by an earlier export")
    parser.add_argument("--metric", default="l2", choices=METRICS, help="filter distance (default l2)")
    parser.add_argument("--mode", default="uniform", choices=("uniform", "global"), help="per-layer sparsity or global ranking")
    parser.add_argument("--max-layer-sparsity", type=parse_sparsity, default=0.9, help="global mode: cap per layer (default 0.9)")


def add_model_arguments(parser: argparse.ArgumentParser, *, weights_required: bool = False) -> None:
    """The ``--arch`` / ``--weights`` pair every model-taking command shares."""
    parser.add_argument("--arch", required=True, help="torchvision classification architecture, or 'demo'")
    parser.add_argument(
        "--weights",
        required=weights_required,
        default="none",
        help="none (random init, seed 0), default (pretrained), or a state_dict file (.pt, .pth, .safetensors)",
    )


def add_device_argument(parser: argparse.ArgumentParser, what: str = "where FPGM distances are computed") -> None:
    """``--device`` (default: CUDA when present)."""
    parser.add_argument("--device", default=None, help=f"{what}: cpu, cuda, cuda:N or mps (default: CUDA when present)")


class PlanArguments(NamedTuple):
    """The plan the flags describe, the recipe it was read from, and whether that recipe fits the weights."""

    plan: SparsityPlan
    recipe: dict[str, Any] | None
    fingerprint_matches: bool | None


def plan_from_args(args: argparse.Namespace, loaded: LoadedModel) -> PlanArguments:
    """The plan of ``--recipe`` or of ``--sparsity``/``--layer``/``--metric``/``--mode``.

    A recipe made on other weights still replays (its counts apply to these weights' scores) with
    a RecipeMismatchWarning, which the CLI prints as a ``warning:`` line.
    """
    if args.recipe:
        if args.sparsity is not None or args.layer:
            raise PlanError("use either --recipe or --sparsity/--layer, not both")
        recipe = read_recipe(args.recipe)
        matches = check_recipe_fingerprint(recipe, loaded.model)
        return PlanArguments(plan_from_recipe(recipe), recipe, matches)
    if args.sparsity is None:
        raise PlanError("give --sparsity S (0…1) or --recipe FILE")
    plan = SparsityPlan(
        sparsity=args.sparsity,
        metric=args.metric,
        overrides=dict(args.layer or []),
        mode=args.mode,
        max_layer_sparsity=args.max_layer_sparsity,
        include_output=getattr(args, "include_output", False),
    )
    return PlanArguments(plan.validated(), None, None)
