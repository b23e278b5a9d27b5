"""``archs`` and ``layers``: what the CLI can load, and what in a model FPGM can prune."""

from __future__ import annotations

import argparse

from ..layers import prunable_layers
from ..models import build_model, classification_architectures
from .flags import add_model_arguments

__all__ = ["register"]


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


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``archs`` and ``layers``."""
    archs = commands.add_parser("archs", help="list the architectures --arch accepts")
    archs.add_argument("--json", action="store_true", help="print JSON")
    archs.set_defaults(run=_cmd_archs)

    layers = commands.add_parser("layers", help="list a model's prunable layers")
    add_model_arguments(layers)
    layers.add_argument("--json", action="store_true", help="print JSON")
    layers.set_defaults(run=_cmd_layers)
