"""``python -m fpgm_core``: list prunable layers and write pruned checkpoints without the dashboard.

Bad input ends with exit status 2 and one line ``error: …`` naming the problem, never a traceback,
and leaves no output file behind.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Callable, Sequence, TypeVar

from ._version import __version__
from .counting import estimate_pruned_costs
from .devices import resolve_device
from .distance import METRICS
from .errors import FpgmError, PlanError
from .export import export_masked, export_paths
from .layers import prunable_layers
from .masks import check_sparsity
from .models import LoadedModel, build_model, classification_architectures
from .plan import SparsityPlan, plan_counts, plan_masks
from .recipe import make_recipe, model_fingerprint, plan_from_recipe, read_recipe

__all__ = [
    "main",
    "build_parser",
    "add_model_arguments",
    "add_plan_arguments",
    "argument_type",
    "parse_sparsity",
    "parse_layer_override",
    "plan_from_args",
]

T = TypeVar("T")

# Modules that add sub-commands through ``register_cli(commands)``: evaluation and demo training,
# slimmed export. Each sub-command sets ``run`` to a function returning its JSON-ready result.
_COMMAND_MODULES = ("fpgm_core.cli_evaluate", "fpgm_core.cli_slim")


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


parse_sparsity = argument_type(check_sparsity)
parse_layer_override = argument_type(_check_layer_override)


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


def _cmd_archs(args: argparse.Namespace) -> dict:
    names = ["demo"] + classification_architectures()
    if not args.json:
        print("\n".join(names))
    return {"architectures": names}


def _cmd_layers(args: argparse.Namespace) -> dict:
    loaded = build_model(args.arch, args.weights)
    layers = prunable_layers(loaded.model)
    if not args.json:
        print(f"{'layer':40} {'type':16} {'filters':>7} {'groups':>6}  weight shape")
        for layer in layers:
            flag = "  (output layer, kept unless included)" if layer.is_output else ""
            print(f"{layer.name:40} {layer.type:16} {layer.filters:7d} {layer.groups:6d}  {layer.weight_shape}{flag}")
    return {"arch": loaded.arch, "weights": loaded.weights, "layers": [layer.to_dict() for layer in layers]}


def plan_from_args(args: argparse.Namespace, loaded: LoadedModel) -> tuple[SparsityPlan, dict | None]:
    if args.recipe:
        if args.sparsity is not None or args.layer:
            raise PlanError("use either --recipe or --sparsity/--layer, not both")
        recipe = read_recipe(args.recipe)
        return plan_from_recipe(recipe), recipe
    if args.sparsity is None:
        raise PlanError("give --sparsity S (0…1) or --recipe FILE")
    plan = SparsityPlan(
        sparsity=args.sparsity,
        metric=args.metric,
        overrides=dict(args.layer or []),
        mode=args.mode,
        max_layer_sparsity=args.max_layer_sparsity,
        include_output=args.include_output,
    )
    return plan.validated(), None


def _cmd_prune(args: argparse.Namespace) -> dict:
    export_paths(args.out)  # reject a bad output name before any work
    device = resolve_device(args.device)
    loaded = build_model(args.arch, args.weights)
    plan, recipe_in = plan_from_args(args, loaded)
    model = loaded.model
    layers = prunable_layers(model)
    group_consistent = args.group_consistent or bool(recipe_in and recipe_in.get("group_consistent"))
    if group_consistent:
        # Coupled layers lose the same channels, so the masked model computes what `slim` exports.
        from .groups import group_masks

        masks = group_masks(model, plan, input_shape=loaded.input_shape, device=device)
    else:
        masks = plan_masks(model, plan, device=device)
    if plan.mode == "uniform" and not group_consistent:
        counts = plan_counts(layers, plan, None)
    else:
        counts = {k: int((~v).sum()) for k, v in masks.items()}
    recipe = make_recipe(model, plan, counts, layers, arch=loaded.arch, weights=loaded.weights)
    if group_consistent:
        recipe["group_consistent"] = True
    if recipe_in is not None:
        # Replays keep the original recipe's settings, so the written recipe equals the one given.
        recipe = {**recipe_in, "model": recipe["model"], "fpgm_core_version": __version__}
    files = export_masked(model, masks, recipe, args.out)
    costs = estimate_pruned_costs(model, masks, loaded.input_shape)
    fingerprint_ok = recipe_in is None or recipe_in.get("model", {}).get("fingerprint") == model_fingerprint(model)
    if not fingerprint_ok:
        print("warning: the recipe was made on different weights; the masks follow these weights", file=sys.stderr)
    summary = {
        "arch": loaded.arch,
        "weights": loaded.weights,
        "metric": plan.metric,
        "mode": plan.mode,
        "device": str(device),
        "files": files.to_dict(),
        "pruned_filters": sum(int((~k).sum()) for k in masks.values()),
        "total_filters": sum(int(k.numel()) for k in masks.values()),
        "layers": {name: {"filters": int(k.numel()), "pruned": int((~k).sum())} for name, k in masks.items()},
        "params_before": costs.params_before,
        "params_after_estimate": costs.params_after,
        "flops_before": costs.flops_before,
        "flops_after_estimate": costs.flops_after,
        "recipe_fingerprint_matches": fingerprint_ok,
    }
    if not args.json:
        print(
            f"pruned {summary['pruned_filters']} of {summary['total_filters']} filters "
            f"({plan.metric}, {plan.mode}); wrote {files.checkpoint}, {files.masks}, {files.recipe}"
        )
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m fpgm_core``."""
    parser = argparse.ArgumentParser(prog="python -m fpgm_core", description="FPGM filter pruning from the command line.")
    parser.add_argument("--version", action="version", version=f"fpgm_core {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    archs = commands.add_parser("archs", help="list the architectures --arch accepts")
    archs.add_argument("--json", action="store_true", help="print JSON")
    archs.set_defaults(run=_cmd_archs)

    layers = commands.add_parser("layers", help="list a model's prunable layers")
    add_model_arguments(layers)
    layers.add_argument("--json", action="store_true", help="print JSON")
    layers.set_defaults(run=_cmd_layers)

    prune = commands.add_parser("prune", help="write a masked checkpoint, its masks and its recipe")
    add_model_arguments(prune, weights_required=True)
    add_plan_arguments(prune)
    prune.add_argument("--include-output", action="store_true", help="also prune the model's final classifier")
    prune.add_argument(
        "--group-consistent", action="store_true",
        help="prune coupled layers (residual adds, depthwise convs) by dependency group, as `slim` does",
    )
    prune.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: CUDA when present)")
    prune.add_argument("--out", required=True, help="checkpoint to write: FILE.pt, FILE.pth or FILE.safetensors")
    prune.add_argument("--json", action="store_true", help="print a JSON summary naming the files written")
    prune.set_defaults(run=_cmd_prune)

    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register_cli(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except FpgmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
    return 0
