"""``archs`` and ``layers``: what the CLI can load, and what in a model FPGM can prune."""

from __future__ import annotations

import argparse

from ..layers import prunable_layers
from ..models import LoadedModel, classification_architectures
from .flags import add_model_arguments, load_model

__all__ = ["register", "onnx_summary"]


def _cmd_archs(args: argparse.Namespace) -> dict:
    if args.timm is not None:
        from ..models.timm import TIMM_PREFIX, timm_architectures

        names = [f"{TIMM_PREFIX}{name}" for name in timm_architectures(args.timm)]
    else:
        names = ["demo"] + classification_architectures()
    if not args.json:
        print("\n".join(names))
    return {"architectures": names}


def onnx_summary(loaded: LoadedModel) -> dict | None:
    """For an ONNX model: whether it converted (or why not) and where BatchNorm looks folded."""
    if loaded.onnx is None:
        return None
    folded = loaded.onnx.analysis.folded
    return {
        "file": loaded.onnx.filename,
        "converted": loaded.onnx.converted,
        "not_converted_because": loaded.onnx.reason,
        "folded_batchnorm_layers": list(folded.layers) if folded else [],
        "folded_batchnorm_evidence": list(folded.evidence) if folded else [],
    }


def _cmd_layers(args: argparse.Namespace) -> dict:
    loaded = load_model(args)
    layers = prunable_layers(loaded.model)
    if not args.json:
        print(f"{'layer':40} {'type':16} {'filters':>7} {'groups':>6}  weight shape")
        for layer in layers:
            flag = "  (output layer, kept unless included)" if layer.is_output else ""
            print(f"{layer.name:40} {layer.type:16} {layer.filters:7d} {layer.groups:6d}  {layer.weight_shape}{flag}")
    result = {"arch": loaded.arch, "weights": loaded.weights, "input_shape": list(loaded.input_shape),
              "layers": [layer.to_dict() for layer in layers]}
    if loaded.onnx is not None:
        result["onnx"] = onnx_summary(loaded)
    return result


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``archs`` and ``layers``."""
    archs = commands.add_parser("archs", help="list the architectures --arch accepts")
    archs.add_argument("--timm", nargs="?", const="", metavar="PATTERN",
                       help="list timm's architectures instead (as timm:NAME), optionally matching a wildcard such as 'resnet*'")
    archs.add_argument("--json", action="store_true", help="print JSON")
    archs.set_defaults(run=_cmd_archs)

    layers = commands.add_parser("layers", help="list a model's prunable layers")
    add_model_arguments(layers)
    layers.add_argument("--json", action="store_true", help="print JSON")
    layers.set_defaults(run=_cmd_layers)
