"""Flags several sub-commands share, and the adapter that turns engine checks into argparse types.

Every pruning command takes the same model flags (``--arch``/``--weights``/``--input-shape``) and
plan flags (``--sparsity``, ``--layer``, ``--recipe``, ``--metric``, ``--mode``,
``--max-layer-sparsity``); they are defined once here so that ``prune``, ``slim`` and the
evaluation commands agree, and :func:`load_model` builds the model they name from any source.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, NamedTuple, TypeVar

from ..distance import METRICS
from ..errors import ModelLoadError, PlanError
from ..masks import check_sparsity
from ..models import LoadedModel, build_model, parse_input_shape, source_kind
from ..plan import SparsityPlan
from ..recipe import check_recipe_fingerprint, plan_from_recipe, read_recipe

__all__ = [
    "argument_type",
    "parse_sparsity",
    "parse_layer_override",
    "parse_sparsity_list",
    "parse_non_negative",
    "ARCH_HELP",
    "add_model_arguments",
    "load_model",
    "add_plan_arguments",
    "add_device_argument",
    "add_input_shape_argument",
    "require_torch_graph",
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


ARCH_HELP = (
    "the model: demo, a torchvision architecture (resnet18), timm:NAME (any timm model), a FILE.onnx, "
    "or package.module:callable (your own code returning an nn.Module; it runs because you name it)"
)


def add_model_arguments(parser: argparse.ArgumentParser, *, weights_required: bool = False) -> None:
    """The ``--arch`` / ``--weights`` / ``--input-shape`` flags every model-taking command shares.

    With ``weights_required`` a command needs ``--weights`` unless ``--arch`` is an ONNX file
    (which carries its weights); :func:`load_model` says so.
    """
    parser.add_argument("--arch", required=True, help=ARCH_HELP)
    parser.add_argument(
        "--weights",
        default=None,
        help="none (random init, seed 0), default (pretrained; the callable's own for package.module:callable), "
             "or a state_dict file (.pt, .pth, .safetensors); an ONNX file carries its own"
             + ("" if weights_required else " (default: none)"),
    )
    add_input_shape_argument(parser)
    parser.set_defaults(weights_required=weights_required)


def add_input_shape_argument(parser: argparse.ArgumentParser) -> None:
    """``--input-shape`` for models that do not declare one (your own code, ONNX graphs with open sizes)."""
    parser.add_argument("--input-shape", metavar="N,C,H,W",
                        help="input shape, batch first, for FLOP counts and checks (default: the model's own: its "
                             "torchvision/timm config, the ONNX graph's input, or your model's input_shape attribute)")


def load_model(args: argparse.Namespace, *, weights: str | None = None) -> LoadedModel:
    """The model ``--arch``/``--weights``/``--input-shape`` name, from any source.

    ``weights`` overrides ``--weights`` (commands with their own default). ModelLoadError when a
    required ``--weights`` is missing, naming what to give.
    """
    weights = weights if weights is not None else args.weights
    kind = source_kind(args.arch)
    if weights is None:
        if getattr(args, "weights_required", False) and kind != "onnx":
            raise ModelLoadError("give --weights: none (random init, seed 0), default (pretrained) or a state_dict file")
        weights = "default" if kind == "onnx" else "none"
    shape = getattr(args, "input_shape", None)
    loaded = build_model(args.arch, weights, input_shape=shape)
    if shape and kind in ("demo", "torchvision", "timm"):
        # Their builders know their own input; a given shape (another resolution) replaces it.
        loaded = dataclasses.replace(loaded, input_shape=parse_input_shape(shape))
    return loaded


def require_torch_graph(loaded: LoadedModel, what: str) -> None:
    """ModelLoadError when ``loaded`` is an ONNX graph that did not convert to PyTorch (``what`` needs it)."""
    if loaded.onnx is not None and not loaded.onnx.converted:
        raise ModelLoadError(
            f"{what} needs the graph in PyTorch, and {loaded.onnx.filename} did not convert ({loaded.onnx.reason}); "
            "`prune --out FILE.onnx` still writes the masked graph"
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
