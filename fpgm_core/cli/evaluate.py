"""Evaluation sub-commands: ``evaluate``, ``sweep`` and ``sensitivity``.

Each returns a JSON-ready dict (printed with ``--json``) and otherwise prints a short human
summary; progress goes to stderr. ``sweep`` and ``sensitivity`` run their points where
``--executor`` says (this process, local worker processes, a Ray cluster) and report where they ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from ..counting import estimate_pruned_costs
from ..criteria import CRITERIA, CRITERION_LABELS, check_criterion, criterion_masks, criterion_metric
from ..distance import METRICS
from ..errors import PlanError
from ..evaluation import (
    MAX_IMAGES,
    DataError,
    EvalData,
    demo_data,
    evaluate_masks,
    image_transform,
    load_image_zip,
    model_categories,
    predict,
)
from ..export import write_atomically
from ..layers import prunable_layers
from ..models import LoadedModel
from ..plan import SparsityPlan, plan_counts, plan_masks
from ..recipe import check_recipe_fingerprint, make_recipe, plan_from_recipe, read_recipe, recipe_json
from ..sensitivity import LAYER_SPARSITIES, SWEEP_SPARSITIES, layer_sensitivity, sparsity_sweep, suggest_plan, sweep_summary

from .executors import add_executor_argument, execution_summary, open_executor, points_device, print_execution
from .flags import (
    ARCH_HELP,
    add_device_argument,
    add_input_shape_argument,
    argument_type,
    load_model,
    parse_layer_override,
    parse_sparsity,
    parse_sparsity_list,
)

__all__ = ["register"]

_criterion = argument_type(check_criterion)


def _add_model_choice(parser: argparse.ArgumentParser) -> None:
    """``--model demo`` or ``--arch NAME [--weights …]``, plus ``--data`` and ``--device``."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", choices=("demo",), help="the bundled demo model (= --arch demo --weights default)")
    which.add_argument("--arch", help=ARCH_HELP)
    parser.add_argument(
        "--weights",
        default=None,
        help="none (random init, seed 0), default (pretrained / bundled), or a state_dict file; default: "
             "'default' with --model, 'none' with --arch (an ONNX file carries its own)",
    )
    add_input_shape_argument(parser)
    parser.add_argument("--data", help="zip of images in ImageFolder layout (CLASS/IMAGE.png); default for the demo "
                                       "model: its held-out digits split")
    parser.add_argument("--max-images", type=int, default=MAX_IMAGES, help=f"refuse zips with more images (default {MAX_IMAGES})")
    add_device_argument(parser, "where the model runs")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _load(args: argparse.Namespace) -> tuple[LoadedModel, EvalData]:
    """The model the arguments name, on the device, and the data to evaluate it on."""
    if args.model:
        args.arch = "demo"
    arch = args.arch
    device = points_device(args)
    loaded = load_model(args, weights=args.weights or ("default" if args.model else None))
    loaded = dataclasses.replace(loaded, model=loaded.model.to(device).eval())
    if args.data:
        path = Path(args.data)
        if not path.is_file():
            raise DataError(f"data zip {args.data!r} does not exist or is not a file")
        transform = image_transform(loaded.arch, model=loaded.model, input_shape=loaded.input_shape)
        categories = model_categories(loaded.arch, model=loaded.model)
        data = load_image_zip(path, transform, categories=categories, max_images=args.max_images)
    elif arch == "demo":
        data = demo_data()
    else:
        raise DataError(f"give --data ZIP (images in ImageFolder layout) to evaluate {arch}")
    return loaded, data


def _progress(args: argparse.Namespace):
    """A progress callback writing one updating line to stderr, or None with --quiet."""
    if getattr(args, "quiet", False):
        return None

    def report(done: int, total: int, what: str) -> None:
        end = "\n" if done >= total else ""
        print(f"\r[{done}/{total}] {what:60.60}", end=end, file=sys.stderr, flush=True)

    return report


def _model_device(model) -> str:
    """The device of the model's parameters, where distances are computed too."""
    return str(next(model.parameters()).device)


def _data_summary(data: EvalData) -> dict:
    return {"source": data.source, "n": data.n, "classes": len(data.classes)}


def _model_summary(loaded: LoadedModel) -> dict:
    return {"arch": loaded.arch, "weights": loaded.weights}


def _cmd_evaluate(args: argparse.Namespace) -> dict:
    loaded, data = _load(args)
    model = loaded.model
    layers = prunable_layers(model)
    if args.recipe and (args.sparsity is not None or args.layer):
        raise PlanError("use either --recipe or --sparsity/--layer, not both")
    recipe = read_recipe(args.recipe) if args.recipe else None
    device = _model_device(model)
    if recipe is not None:
        check_recipe_fingerprint(recipe, model)
        plan = plan_from_recipe(recipe)
    else:
        metric = criterion_metric(args.criterion) if args.criterion else None
        plan = SparsityPlan(sparsity=args.sparsity or 0.0, metric=metric or "l2", overrides=dict(args.layer or [])).validated()
    counts = plan_counts(layers, plan)
    if args.criterion is None:
        # The plan's own FPGM metric: a recipe may have been made with any of them, cosine included.
        criterion = f"fpgm-{plan.metric}"
        masks = plan_masks(model, plan, device=device)
    else:
        criterion = args.criterion
        masks = criterion_masks(model, plan, criterion, counts=counts, seed=args.seed, device=device)
    reference = predict(model, data.images)
    baseline = evaluate_masks(model, {}, data, reference=reference)
    result = evaluate_masks(model, masks, data, reference=reference)
    costs = estimate_pruned_costs(model, masks, data.input_shape)
    summary = {
        "model": _model_summary(loaded),
        "data": _data_summary(data),
        "criterion": criterion,
        "seed": args.seed if criterion == "random" else None,
        "sparsity": None if recipe is not None else plan.sparsity,
        "recipe": args.recipe,
        **result.to_dict(),
        "baseline_top1": baseline.top1,
        "drop": baseline.top1 - result.top1,
        "pruned_filters": sum(counts.values()),
        "total_filters": sum(layer.filters for layer in layers if layer.name in counts),
        "flops_removed": costs.flops_removed,
        "params_removed": costs.params_removed,
    }
    if not args.json:
        print(
            f"{loaded.arch} on {data.source}: top-1 {result.top1:.2%} (unpruned {baseline.top1:.2%}), "
            f"agreement {result.agreement:.2%}, KL {result.kl:.4f}, n = {result.n}; "
            f"{CRITERION_LABELS.get(criterion, criterion)} pruned {summary['pruned_filters']} of {summary['total_filters']} filters, "
            f"FLOPs -{costs.flops_removed:.1%}"
        )
    return summary


def _cmd_sweep(args: argparse.Namespace) -> dict:
    since = time.monotonic()
    with open_executor(args) as executor:
        loaded, data = _load(args)
        criteria = args.criteria or list(CRITERIA)
        points = sparsity_sweep(
            loaded.model, data, sparsities=args.sparsities, criteria=criteria, seeds=range(args.seeds),
            progress=_progress(args), device=_model_device(loaded.model), executor=executor,
        )
        execution = execution_summary(executor, since)
    rows = sweep_summary(points)
    if not args.json:
        sparsities = sorted({row["sparsity"] for row in rows})
        print(f"top-1 on {data.source}, n = {data.n} (random: mean over {args.seeds} seeds)")
        print(f"{'criterion':18}" + "".join(f"{s:>7.0%}" for s in sparsities))
        for criterion in dict.fromkeys(row["criterion"] for row in rows):
            by_sparsity = {row["sparsity"]: row["top1"] for row in rows if row["criterion"] == criterion}
            print(f"{CRITERION_LABELS[criterion]:18}" + "".join(f"{by_sparsity[s]:>7.1%}" for s in sparsities))
        print_execution(execution)
    return {"model": _model_summary(loaded), "data": _data_summary(data), "summary": rows,
            "points": [point.to_dict() for point in points], "execution": execution}


def _cmd_sensitivity(args: argparse.Namespace) -> dict:
    if args.save_recipe and not args.save_recipe.endswith(".json"):
        raise PlanError(f"--save-recipe {args.save_recipe!r} must end in .json")
    budget = args.budget_points / 100
    if not 0 <= budget <= 1:
        raise PlanError(f"--budget-points {args.budget_points} must be between 0 and 100")
    since = time.monotonic()
    with open_executor(args) as executor:
        loaded, data = _load(args)
        model = loaded.model
        device = _model_device(model)
        reference = predict(model, data.images)
        sensitivity = layer_sensitivity(model, data, sparsities=args.sparsities, metric=args.metric, reference=reference,
                                        progress=_progress(args), device=device, executor=executor)
        suggestion = suggest_plan(model, data, sensitivity, budget, reference=reference,
                                  max_evaluations=args.max_evaluations, progress=_progress(args), device=device,
                                  executor=executor)
        execution = execution_summary(executor, since)
    result = {"model": _model_summary(loaded), "data": _data_summary(data), "sensitivity": sensitivity.to_dict(),
              "suggestion": suggestion.to_dict(), "execution": execution}
    if args.save_recipe:
        layers = prunable_layers(model)
        plan = suggestion.plan()
        recipe = make_recipe(model, plan, plan_counts(layers, plan), layers, arch=loaded.arch, weights=loaded.weights)
        write_atomically({Path(args.save_recipe): recipe_json(recipe).encode()})
        result["recipe"] = args.save_recipe
    if not args.json:
        print(f"top-1 drop (points) with one layer pruned, on {data.source}; unpruned top-1 {sensitivity.baseline_top1:.2%}")
        sparsities = sorted({p.sparsity for p in sensitivity.points})
        print(f"{'layer':28}" + "".join(f"{s:>7.0%}" for s in sparsities))
        for name in sensitivity.layers():
            print(f"{name:28.28}" + "".join(f"{100 * p.drop:>7.1f}" for p in sensitivity.curve(name)))
        plan_text = ", ".join(f"{name}={s:g}" for name, s in suggestion.overrides.items()) or "(prune nothing)"
        print(
            f"suggested for a budget of {args.budget_points:g} point(s): {plan_text}; verified drop "
            f"{100 * suggestion.drop:.2f} points, FLOPs -{suggestion.flops_removed:.1%} ({suggestion.evaluations} plans evaluated)"
        )
        if args.save_recipe:
            print(f"wrote {args.save_recipe} (replay with: python -m fpgm_core prune --recipe {args.save_recipe} …)")
        print_execution(execution)
    return result


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``evaluate``, ``sweep`` and ``sensitivity``."""
    evaluate = commands.add_parser("evaluate", help="top-1 and fidelity of a pruned model on held-out images")
    _add_model_choice(evaluate)
    evaluate.add_argument("--sparsity", type=parse_sparsity, help="fraction of filters pruned in every layer but the output, 0…1 (default 0)")
    evaluate.add_argument("--layer", action="append", type=parse_layer_override, metavar="NAME=S", help="per-layer sparsity (repeatable)")
    evaluate.add_argument("--recipe", help="prune exactly the counts of a recipe JSON")
    evaluate.add_argument("--criterion", type=_criterion, metavar="{" + ",".join(CRITERIA) + "}",
                          help="which filters to prune (default fpgm-l2, or the recipe's metric)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of --criterion random (default 0)")
    evaluate.set_defaults(run=_cmd_evaluate)

    sweep = commands.add_parser("sweep", help="top-1 of every criterion at global sparsities 0 … 0.9")
    _add_model_choice(sweep)
    sweep.add_argument("--criteria", type=_criterion, nargs="+", metavar="CRITERION", help=f"default: all of {', '.join(CRITERIA)}")
    sweep.add_argument("--seeds", type=int, default=5, help="random pruning runs (seeds 0…N-1, default 5)")
    sweep.add_argument("--sparsities", type=parse_sparsity_list, default=list(SWEEP_SPARSITIES), help="comma-separated (default 0,0.1,…,0.9)")
    sweep.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_executor_argument(sweep)
    sweep.set_defaults(run=_cmd_sweep)

    sensitivity = commands.add_parser("sensitivity", help="per-layer sensitivity and a plan within an accuracy budget")
    _add_model_choice(sensitivity)
    sensitivity.add_argument("--budget-points", type=float, default=1.0, help="largest top-1 drop allowed, in percentage points (default 1)")
    sensitivity.add_argument("--metric", default="l2", choices=METRICS, help="FPGM distance (default l2)")
    sensitivity.add_argument("--sparsities", type=parse_sparsity_list, default=list(LAYER_SPARSITIES), help="comma-separated (default 0.1,…,0.9)")
    sensitivity.add_argument("--max-evaluations", type=int, default=64, help="plans the suggestion may verify (default 64)")
    sensitivity.add_argument("--save-recipe", metavar="FILE.json", help="write the suggested plan as a recipe for `prune --recipe`")
    sensitivity.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_executor_argument(sensitivity)
    sensitivity.set_defaults(run=_cmd_sensitivity)
