"""``prune``: write a masked checkpoint, its masks and its recipe.

Everything that can fail (the plan, the masks, the cost estimate) runs before the first byte is
written, and the three files are written together or not at all. An ONNX model's checkpoint is
its masked graph (``--out FILE.onnx``), checked in onnxruntime before it is written.
"""

from __future__ import annotations

import argparse

from .._version import __version__
from ..counting import estimate_pruned_costs
from ..devices import resolve_device
from ..export import export_masked, export_paths
from ..layers import prunable_layers
from ..plan import plan_counts, plan_masks
from ..recipe import make_recipe
from .flags import add_device_argument, add_model_arguments, add_plan_arguments, load_model, plan_from_args, require_torch_graph

__all__ = ["register"]


def _cmd_prune(args: argparse.Namespace) -> dict:
    from ..models import source_kind

    onnx_source = source_kind(args.arch) == "onnx"
    if onnx_source:
        from ..onnx_graph import export_masked_onnx, onnx_export_paths

        onnx_export_paths(args.out)  # reject a bad output name before any work
    else:
        export_paths(args.out)
    device = resolve_device(args.device)
    loaded = load_model(args)
    plan, recipe_in, fingerprint_matches = plan_from_args(args, loaded)
    model = loaded.model
    layers = prunable_layers(model)
    group_consistent = args.group_consistent or bool(recipe_in and recipe_in.get("group_consistent"))
    if group_consistent:
        # Coupled layers lose the same channels, so the masked model computes what `slim` exports.
        from ..groups import group_masks

        require_torch_graph(loaded, "--group-consistent")

        masks = group_masks(model, plan, input_shape=loaded.input_shape, device=device)
        counts = {name: int((~keep).sum()) for name, keep in masks.items()}
    else:
        masks = plan_masks(model, plan, device=device)
        counts = plan_counts(layers, plan, None) if plan.mode == "uniform" else {k: int((~v).sum()) for k, v in masks.items()}
    recipe = make_recipe(model, plan, counts, layers, arch=loaded.arch, weights=loaded.weights)
    if recipe_in is not None:
        # A replay keeps the given recipe's settings; the counts and the flags are what was written,
        # so the written recipe reproduces its own checkpoint.
        recipe = {**recipe_in, "model": recipe["model"], "fpgm_core_version": __version__, "tracing": recipe["tracing"],
                  "layers": recipe["layers"]}
    if group_consistent:
        recipe["group_consistent"] = True
    costs = estimate_pruned_costs(model, masks, loaded.input_shape)
    if onnx_source:
        files = export_masked_onnx(loaded.onnx, masks, recipe, args.out, loaded.input_shape)
    else:
        files = export_masked(model, masks, recipe, args.out, input_shape=loaded.input_shape)
    summary = {
        "arch": loaded.arch,
        "weights": loaded.weights,
        "metric": plan.metric,
        "mode": plan.mode,
        "device": str(device),
        "group_consistent": group_consistent,
        "files": files.to_dict(),
        "pruned_filters": sum(int((~k).sum()) for k in masks.values()),
        "total_filters": sum(int(k.numel()) for k in masks.values()),
        "layers": {name: {"filters": int(k.numel()), "pruned": int((~k).sum())} for name, k in masks.items()},
        "params_before": costs.params_before,
        "params_after_estimate": costs.params_after,
        "flops_before": costs.flops_before,
        "flops_after_estimate": costs.flops_after,
        "recipe_fingerprint_matches": fingerprint_matches is not False,
    }
    if not args.json:
        print(
            f"pruned {summary['pruned_filters']} of {summary['total_filters']} filters "
            f"({plan.metric}, {plan.mode}); wrote {files.checkpoint}, {files.masks}, {files.recipe}"
        )
    return summary


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``prune``."""
    prune = commands.add_parser("prune", help="write a masked checkpoint, its masks and its recipe")
    add_model_arguments(prune, weights_required=True)
    add_plan_arguments(prune)
    prune.add_argument("--include-output", action="store_true", help="also prune the model's final classifier")
    prune.add_argument(
        "--group-consistent", action="store_true",
        help="prune coupled layers (residual adds, depthwise convs) by dependency group, as `slim` does",
    )
    add_device_argument(prune)
    prune.add_argument("--out", required=True, help="checkpoint to write: FILE.pt, FILE.pth or FILE.safetensors "
                                                   "(for an ONNX model: FILE.onnx, its masked graph)")
    prune.add_argument("--json", action="store_true", help="print a JSON summary naming the files written")
    prune.set_defaults(run=_cmd_prune)
