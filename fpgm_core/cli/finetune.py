"""``finetune`` and ``finetune-sweep``: win back the accuracy pruning cost, with pruned filters exactly zero.

``finetune`` prunes by a plan (``--sparsity``/``--layer`` or ``--recipe``) and fine-tunes, then writes
four files together or not at all: the fine-tuned checkpoint (loads with ``strict=True`` into the
unmodified architecture), its masks, its recipe (the plan's counts plus every fine-tune setting,
so ``finetune --recipe`` replays it) and the per-epoch history. Given a fine-tune's recipe, flags
left out take the recipe's values. ``slim --masks`` (or ``slim --recipe`` of a fine-tune) slims the
result to exactly its zeroed channels.

``finetune-sweep`` is the teaching sweep after training: criteria × sparsities × seeds, each
pruned and fine-tuned the same way, beside the same point right after pruning. Its points run
where ``--executor`` says (this process, local worker processes, a Ray cluster), on this
process's torch threads (``--threads``) wherever they run, so they give the same weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..criteria import CRITERIA, CRITERION_LABELS, check_criterion
from ..devices import resolve_device
from ..errors import PlanError
from ..evaluation import DataError, image_transform, model_categories
from ..export import export_paths, serialize_tensors, write_atomically
from ..models import LoadedModel
from ..recipe import recipe_json
from ..training import (
    AUGMENTATIONS,
    DEFAULT_VAL_FRACTION,
    LR_SCHEDULES,
    MAX_TRAINING_IMAGES,
    OPTIMIZERS,
    SCHEDULES,
    SWEEP_CRITERIA,
    SWEEP_SPARSITIES,
    FineTuneSettings,
    TrainingData,
    check_replay,
    demo_training_data,
    fine_tune,
    finetune_recipe,
    finetuned_summary,
    finetuned_sweep,
    load_training_zip,
    recipe_settings,
)
from .executors import add_executor_argument, execution_summary, open_executor, points_device, print_execution
from .flags import (
    add_device_argument,
    add_model_arguments,
    add_plan_arguments,
    argument_type,
    load_model,
    parse_sparsity_list,
    plan_from_args,
    require_torch_graph,
)

__all__ = ["register", "history_path"]

_criterion = argument_type(check_criterion)
# Settings a flag can give; a flag left out (None) takes the recipe's value, else the default.
_SETTING_FLAGS = {
    "epochs": "epochs", "lr": "lr", "batch_size": "batch_size", "optimizer": "optimizer", "weight_decay": "weight_decay",
    "lr_schedule": "lr_schedule", "schedule": "schedule", "ramp_epochs": "ramp_epochs", "criterion": "criterion",
    "distill": "distill_temperature", "distill_weight": "distill_weight", "augment": "augment", "seed": "seed",
}


def history_path(out: str | Path) -> Path:
    """Where ``finetune --out FILE`` writes the history: ``<stem>.history.json`` beside the checkpoint."""
    stem = export_paths(out).checkpoint.with_suffix("")
    return stem.with_name(f"{stem.name}.history.json")


def _settings(args: argparse.Namespace, base: FineTuneSettings | None, recipe: dict | None) -> FineTuneSettings:
    values = (base or FineTuneSettings()).to_dict()
    for flag, field_name in _SETTING_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            values[field_name] = value
    if getattr(args, "regrow", False):
        values["regrow"] = True
    if getattr(args, "group_consistent", False) or bool(recipe and recipe.get("group_consistent")):
        values["group_consistent"] = True
    return FineTuneSettings(**values).validated()


def _training_data(args: argparse.Namespace, loaded: LoadedModel) -> TrainingData:
    arch = loaded.arch
    if args.data == "demo":
        if arch != "demo":
            raise DataError(f"--data demo is the demo model's digits (8×8 greyscale); give a zip of images to fine-tune {arch}")
        return demo_training_data()
    path = Path(args.data)
    if not path.is_file():
        raise DataError(f"--data {args.data!r} is neither 'demo' nor a zip file that exists")
    transform = image_transform(arch, model=loaded.model, input_shape=tuple(loaded.input_shape))
    return load_training_zip(path, transform, categories=model_categories(arch, model=loaded.model), val_fraction=args.val_fraction,
                             split_seed=args.split_seed, max_images=args.max_images, name=path.name)


def _set_threads(args: argparse.Namespace, recipe: dict | None) -> None:
    """CPU threads for this process: ``--threads``, else a fine-tune recipe's (so a replay matches), else torch's."""
    threads = args.threads
    if threads is None and recipe is not None:
        threads = (recipe.get("finetune") or {}).get("threads")
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise PlanError(f"--threads must be a whole number ≥ 1, got {threads!r}")
        # The CLI owns its process, so the process-wide setting is ours to choose.
        torch.set_num_threads(threads)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def _reporter(args: argparse.Namespace):
    def report(epoch: int, metrics: dict[str, Any]) -> None:
        if args.quiet:
            return
        if epoch == 0:
            line = (f"pruned {metrics['pruned']} filters: held-out top-1 {_percent(metrics['top1'])}, "
                    f"agreement {metrics['agreement']:.2%} before fine-tuning")
        else:
            line = (f"epoch {epoch}/{metrics['epochs']}  loss {metrics['train_loss']:.4f}  held-out top-1 "
                    f"{_percent(metrics['top1'])}  agreement {metrics['agreement']:.2%}  ({metrics['seconds']:.1f} s)")
        print(line, file=sys.stderr, flush=True)

    return report


def _cmd_finetune(args: argparse.Namespace) -> dict:
    paths = export_paths(args.out)  # reject a bad output name before any work
    history_file = history_path(args.out)
    device = resolve_device(args.device)
    loaded = load_model(args)
    require_torch_graph(loaded, "fine-tuning")
    plan, recipe_in, fingerprint_matches = plan_from_args(args, loaded)
    settings = _settings(args, recipe_settings(recipe_in) if recipe_in else None, recipe_in)
    data = _training_data(args, loaded)
    _set_threads(args, recipe_in)
    if recipe_in is not None and recipe_in.get("finetune"):
        check_replay(recipe_in, data.record, str(device), torch.get_num_threads())
    # Dropout and other stochastic layers draw from torch's global generator: this process is ours.
    torch.manual_seed(settings.seed)
    result = fine_tune(loaded.model, plan, data, settings, device=device, amp=False if args.no_amp else None,
                       progress=_reporter(args))
    recipe = finetune_recipe(loaded.model, plan, result, arch=loaded.arch, weights=loaded.weights,
                             masks_file=paths.masks.name)
    if recipe_in is not None:
        # A replay keeps the given recipe's plan settings; what ran is what was written.
        recipe = {**recipe_in, **{key: recipe[key] for key in ("model", "layers", "finetune")},
                  "fpgm_core_version": __version__}
        if settings.group_consistent:
            recipe["group_consistent"] = True
    fmt = paths.checkpoint.suffix
    history = {**result.to_dict(), "arch": loaded.arch, "weights": loaded.weights, "recipe": paths.recipe.name}
    write_atomically(
        {
            paths.checkpoint: serialize_tensors(result.model.state_dict(), fmt),
            paths.masks: serialize_tensors({name: keep for name, keep in result.masks.items()}, fmt),
            paths.recipe: recipe_json(recipe).encode(),
            history_file: (json.dumps(history, indent=2) + "\n").encode(),
        }
    )
    final, untrained = result.final, result.untrained
    summary = {
        "arch": loaded.arch,
        "weights": loaded.weights,
        "files": {**paths.to_dict(), "history": str(history_file)},
        "pruned_filters": sum(result.counts.values()),
        "baseline_top1": history["baseline"]["top1"],
        "untrained_top1": untrained.top1,
        "top1": final.top1,
        "agreement": final.agreement,
        "kl": final.kl,
        "settings": settings.to_dict(),
        "data": data.record,
        "device": result.device,
        "amp": result.amp,
        "threads": result.threads,
        "seconds": round(result.seconds, 3),
        "history": [record.to_dict() for record in result.history],
        "recipe_fingerprint_matches": fingerprint_matches is not False,
    }
    if not args.json:
        print(
            f"fine-tuned {loaded.arch} with {summary['pruned_filters']} filters pruned: held-out top-1 "
            f"{_percent(untrained.top1)} → {_percent(final.top1)} (unpruned {_percent(summary['baseline_top1'])}) in "
            f"{settings.epochs} epochs, {result.seconds:.1f} s; wrote {paths.checkpoint}, {paths.masks}, {paths.recipe}, {history_file}"
        )
    return summary


def _cmd_finetune_sweep(args: argparse.Namespace) -> dict:
    if args.seeds < 1:
        raise PlanError("--seeds must be at least 1")
    settings = _settings(args, None, None)
    _set_threads(args, None)
    since = time.monotonic()
    with open_executor(args) as executor:
        device = points_device(args)
        loaded = load_model(args)
        require_torch_graph(loaded, "fine-tuning")
        data = _training_data(args, loaded)

        def report(done: int, total: int, what: str) -> None:
            if not args.quiet:
                print(f"[{done}/{total}] {what}", file=sys.stderr, flush=True)

        points = finetuned_sweep(loaded.model, data, settings, sparsities=args.sparsities, criteria=args.criteria,
                                 seeds=range(args.seeds), device=str(device), executor=executor, progress=report)
        execution = execution_summary(executor, since)
    rows = finetuned_summary(points)
    if not args.json:
        print(f"{'criterion':<18} {'sparsity':>8} {'pruned':>8} {'fine-tuned':>16} {'drop':>7} {'FLOPs cut':>9}")
        for row in rows:
            spread = f" ± {row['top1_std']:.1%}" if row["runs"] > 1 and row["top1_std"] is not None else ""
            print(f"{CRITERION_LABELS[row['criterion']]:<18} {row['sparsity']:>8.0%} {_percent(row['pruned_top1']):>8} "
                  f"{_percent(row['top1']) + spread:>16} {_percent(row['drop']):>7} {row['flops_removed']:>9.1%}")
        print_execution(execution)
    return {"arch": loaded.arch, "weights": loaded.weights, "settings": settings.to_dict(), "data": data.record,
            "device": str(device), "threads": torch.get_num_threads(), "points": [point.to_dict() for point in points],
            "summary": rows, "execution": execution}


def _add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """The fine-tune settings (defaults: a recipe's, else FineTuneSettings')."""
    defaults = FineTuneSettings()
    parser.add_argument("--data", required=True, help="demo (the digits' training split) or a zip: train/ and val/ "
                                                      "folders in ImageFolder layout, or one ImageFolder split by class")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help=f"one-folder zips: fraction of each class held out (default {DEFAULT_VAL_FRACTION})")
    parser.add_argument("--split-seed", type=int, default=0, help="one-folder zips: seed of the held-out pick (default 0)")
    parser.add_argument("--max-images", type=int, default=MAX_TRAINING_IMAGES,
                        help=f"refuse zips with more images (default {MAX_TRAINING_IMAGES})")
    parser.add_argument("--epochs", type=int, help=f"epochs (default {defaults.epochs})")
    parser.add_argument("--lr", type=float, help=f"peak learning rate (default {defaults.lr:g})")
    parser.add_argument("--batch-size", type=int, help=f"images per step (default {defaults.batch_size})")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default {defaults.optimizer}")
    parser.add_argument("--weight-decay", type=float, help=f"default {defaults.weight_decay:g}")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, help=f"default {defaults.lr_schedule}")
    parser.add_argument("--distill", type=float, metavar="T", help="distil from the unpruned model at temperature T")
    parser.add_argument("--distill-weight", type=float, metavar="W",
                        help=f"weight of distillation against cross-entropy; 1 = distillation alone, no labels needed "
                             f"(default {defaults.distill_weight:g})")
    parser.add_argument("--augment", choices=AUGMENTATIONS, help="auto: ±1-pixel shifts for the demo digits, none for zips")
    parser.add_argument("--seed", type=int, help="seed of the batch order, augmentation and random masks (default 0)")
    parser.add_argument("--no-amp", action="store_true", help="on CUDA: train in float32, not mixed precision")
    parser.add_argument("--threads", type=int, help="CPU threads (default: a fine-tune recipe's, else torch's; results "
                                                    "are bit-reproducible for a given count; small models run fastest on 1)")
    add_device_argument(parser, "where to train")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``finetune`` and ``finetune-sweep``."""
    finetune = commands.add_parser(
        "finetune",
        help="prune by a plan and fine-tune, keeping the pruned filters exactly zero",
        description="Prune by a plan and fine-tune the pruned model; writes the checkpoint, masks, recipe and history "
                    "(all or nothing). Flags not given take a fine-tune recipe's values.",
    )
    add_model_arguments(finetune, weights_required=True)
    add_plan_arguments(finetune)
    finetune.add_argument("--include-output", action="store_true", help="also prune the model's final classifier")
    finetune.add_argument("--group-consistent", action="store_true",
                          help="coupled layers lose the same channels, so the result slims (`slim --masks`)")
    finetune.add_argument("--criterion", type=lambda text: text if text == "fpgm" else _criterion(text), metavar="C",
                          help=f"which filters the masks prune: fpgm (the plan's metric, default), {', '.join(CRITERIA)}")
    finetune.add_argument("--schedule", choices=SCHEDULES, help="fixed masks (default) or re-chosen after every epoch")
    finetune.add_argument("--regrow", action="store_true", help="per-epoch: pruned filters train between re-selections")
    finetune.add_argument("--ramp-epochs", type=int, help="per-epoch: reach the plan's sparsity over this many epochs")
    _add_setting_arguments(finetune)
    finetune.add_argument("--out", required=True, help="checkpoint to write: FILE.pt, FILE.pth or FILE.safetensors")
    finetune.set_defaults(run=_cmd_finetune)

    sweep = commands.add_parser(
        "finetune-sweep",
        help="accuracy after fine-tuning: criteria × sparsities × seeds, each pruned and fine-tuned the same way",
    )
    add_model_arguments(sweep, weights_required=True)
    sweep.add_argument("--sparsities", type=parse_sparsity_list, default=list(SWEEP_SPARSITIES),
                       help="comma-separated uniform sparsities (default 0.3,0.5,0.7)")
    sweep.add_argument("--criteria", type=lambda text: [_criterion(part) for part in text.split(",") if part.strip()],
                       default=list(SWEEP_CRITERIA), help=f"comma-separated criteria (default {','.join(SWEEP_CRITERIA)})")
    sweep.add_argument("--seeds", type=int, default=3, help="seeds per point (default 3)")
    _add_setting_arguments(sweep)
    add_executor_argument(sweep)
    sweep.set_defaults(run=_cmd_finetune_sweep)
