"""``slim``: write a physically smaller model (.pt2, .onnx or .pt) with measurements.

The plan is given as for ``prune`` (``--sparsity`` with optional ``--layer`` overrides, or
``--recipe``). The slimmed model is checked against the group-masked model before anything is
written; parameters, FLOPs, file size and CPU latency are measured before and after.

A fine-tuned checkpoint is slimmed by its masks (``--masks FILE``, or the masks file a fine-tune's
recipe names): exactly the channels they hold at zero are removed. FPGM is not asked again: on
trained weights it would choose by the weights, not by what was zeroed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .flags import (
    add_device_argument,
    add_model_arguments,
    add_plan_arguments,
    load_model,
    parse_non_negative,
    plan_from_args,
    require_torch_graph,
)

__all__ = ["register"]


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 1,32, got {text!r}") from exc
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return sizes


def _human(count: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.2f}{unit}"
    return f"{count:.0f}"


def _file_size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def _masks_file(args: argparse.Namespace) -> Path | None:
    """``--masks``, or the masks file beside a fine-tune's ``--recipe``; None for a plan."""
    from ..errors import PlanError
    from ..recipe import read_recipe

    if args.masks:
        if args.sparsity is not None or args.layer:
            raise PlanError("use either --masks or --sparsity/--layer, not both")
        return Path(args.masks)
    if not args.recipe or args.sparsity is not None or args.layer:
        return None  # a plan (or the either/or error) from the plan flags
    recipe = read_recipe(args.recipe)
    finetune = recipe.get("finetune")
    if not finetune:
        return None
    named = finetune.get("masks_file")
    candidate = Path(args.recipe).parent / named if named else None
    if candidate is None or not candidate.is_file():
        raise PlanError(
            f"{args.recipe} is a fine-tune's recipe: its weights were trained, so FPGM would not find the zeroed "
            f"channels again; give --masks FILE (the .masks file written beside it{f', {named}' if named else ''})"
        )
    return candidate


def _slim_by_masks(args: argparse.Namespace, loaded, masks_path: Path):
    """Slim the loaded (fine-tuned) weights to exactly the channels the masks zero."""
    import warnings

    from ..errors import FpgmWarning, PlanError
    from ..recipe import read_recipe
    from ..training import read_masks, slim_masked, unmasked_entries

    masks = read_masks(masks_path)
    if args.recipe:
        recorded = {name: entry["pruned"] for name, entry in read_recipe(args.recipe)["layers"].items() if entry["pruned"]}
        given = {name: int((~keep).sum()) for name, keep in masks.items() if bool((~keep).any())}
        if recorded != given:
            raise PlanError(f"{masks_path} prunes other counts than the recipe {args.recipe}: they are not one export")
    not_zero = unmasked_entries(loaded.model, masks)
    if not_zero:
        warnings.warn(
            f"the weights are not zero at every filter the masks prune ({', '.join(not_zero[:4])}): "
            "the slimmed model equals these weights with the masks applied",
            FpgmWarning,
            stacklevel=2,
        )
    print(f"note: slimming by the masks in {masks_path}", file=sys.stderr)
    return slim_masked(loaded.model, masks, input_shape=loaded.input_shape, latency_repeats=args.repeats,
                       batch_sizes=args.batch_sizes, threads=args.threads)


def _cmd_slim(args: argparse.Namespace) -> dict:
    # Imported here: Torch-Pruning and the exporters load only when a model is slimmed.
    from ..slim import slim_format

    fmt = slim_format(args.out)  # reject a bad output name before any work
    if not args.threads:
        return _slim(args, fmt)
    import torch

    # The CLI's process is its own: it sets its thread count for the command (the engine never
    # does, since in the dashboard that would change every session's) and puts it back after.
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _slim(args, fmt)
    finally:
        torch.set_num_threads(previous)


def _slim(args: argparse.Namespace, fmt: str) -> dict:
    from ..devices import resolve_device
    from ..slim import export_slimmed, serialize_model, slim_model

    device = resolve_device(args.device)
    loaded = load_model(args)
    require_torch_graph(loaded, "slimming")
    masks_path = _masks_file(args)
    if masks_path is not None:
        result = _slim_by_masks(args, loaded, masks_path)
        metric, mode = None, "masks"
    else:
        plan = plan_from_args(args, loaded).plan
        result = slim_model(
            loaded.model,
            plan,
            input_shape=loaded.input_shape,
            device=device,
            latency_repeats=args.repeats,
            batch_sizes=args.batch_sizes,
            threads=args.threads,
        )
        metric, mode = plan.metric, plan.mode
    written = export_slimmed(result.model, args.out, input_shape=loaded.input_shape)
    original_file = serialize_model(loaded.model, fmt, input_shape=loaded.input_shape, check=False)
    summary = {
        "arch": loaded.arch,
        "weights": loaded.weights,
        "metric": metric,
        "mode": mode,
        **result.to_dict(),
        "file": written.to_dict(),
        "file_bytes_before": original_file.size,
        "file_bytes_after": written.size,
    }
    for row in result.blocked:
        print(f"note: kept group {row['root']} whole: blocked by {row['blocked_by']} ({row['reason']})", file=sys.stderr)
    if written.note:
        print(f"note: {written.note}", file=sys.stderr)
    if not args.json:
        latency = ""
        if result.latency_ms:
            before, after = result.latency_ms["before"], result.latency_ms["after"]
            latency = "; latency " + ", ".join(f"batch {b}: {before[b]:.1f} → {after[b]:.1f} ms" for b in before)
        check = result.verification
        print(
            f"slimmed {loaded.arch}: params {_human(result.params_before)} → {_human(result.params_after)}, "
            f"FLOPs {_human(result.flops_before)} → {_human(result.flops_after)}{latency}; "
            f"outputs match the group-masked model (max diff {check.max_abs_diff:.2g} ≤ {check.tolerance:.2g}); "
            f"wrote {written.path} ({_file_size(written.size)}, was {_file_size(original_file.size)})"
        )
    return summary


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``slim``."""
    slim = commands.add_parser(
        "slim",
        help="write a physically smaller model (.pt2, .onnx or .pt), verified and measured",
        description=(
            "Remove the channels an FPGM plan prunes, per dependency group (Torch-Pruning), check the result "
            "against the group-masked model, and measure parameters, FLOPs, file size and CPU latency before and after."
        ),
    )
    add_model_arguments(slim, weights_required=True)
    add_plan_arguments(slim)
    slim.add_argument("--masks", help="slim a fine-tuned checkpoint by its masks file (FILE.masks.safetensors): exactly "
                                      "the channels it zeroes are removed")
    slim.set_defaults(include_output=False)  # the classifier's outputs are the classes: never slimmed
    add_device_argument(slim)
    slim.add_argument("--out", required=True, help="file to write: FILE.pt2 (torch.export), FILE.onnx or FILE.pt (pickled module)")
    slim.add_argument("--repeats", type=parse_non_negative, default=5, help="timed runs per batch size for latency (median; 0 skips)")
    slim.add_argument("--batch-sizes", type=_batch_sizes, default=(1, 32), help="batch sizes timed (default 1,32)")
    slim.add_argument("--threads", type=parse_non_negative, default=None, help="CPU threads for the latency runs (default: torch's)")
    slim.add_argument("--json", action="store_true", help="print a JSON summary")
    slim.set_defaults(run=_cmd_slim)
