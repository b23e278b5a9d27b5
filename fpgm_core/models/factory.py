"""Your own code, trusted: ``package.module:callable`` returning an ``nn.Module``.

The callable is imported and called with no arguments, under a random seed of 0 (so a model it
initialises randomly is the same every time). This runs the named code: it happens only because
the person starting the CLI (``--arch``) or the dashboard (``--factory`` / ``FPGM_MODEL_FACTORIES``)
named it. Nothing uploaded is ever imported or called.

Weights: ``none``/``default`` keep what the callable returned; a state_dict file loads strictly.
The input shape is, in order: the one given (``--input-shape``), the model's own ``input_shape``
or ``example_input_shape`` attribute, or a timm-style ``pretrained_cfg["input_size"]``.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..errors import ModelLoadError
from .checkpoints import load_weights, read_state_dict
from .loaded import LoadedModel, parse_input_shape, seeded_init

__all__ = ["is_factory_spec", "check_factory_spec", "declared_input_shape", "build_factory"]

_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_factory_spec(arch: str) -> bool:
    """Whether ``arch`` reads as ``package.module:callable`` (and not ``timm:NAME``)."""
    return bool(_SPEC.match(arch)) and not arch.startswith("timm:")


def check_factory_spec(spec: str) -> str:
    """``spec`` stripped, or ModelLoadError when it is not ``package.module:callable``."""
    spec = spec.strip()
    if not is_factory_spec(spec):
        raise ModelLoadError(f"model factory {spec!r}: expected package.module:callable (e.g. mymodels.nets:build_resnet)")
    return spec


def _resolve(spec: str) -> Any:
    module_name, _, attribute = check_factory_spec(spec).partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"model factory {spec!r}: cannot import {module_name!r} ({exc}); it must be importable "
            "from where the command runs (on PYTHONPATH, or installed)"
        ) from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ModelLoadError(f"model factory {spec!r}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelLoadError(f"model factory {spec!r}: {attribute} is not callable")
    return target


def declared_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The input shape a model declares (``input_shape``, ``example_input_shape`` or timm's cfg), or None."""
    for attribute in ("input_shape", "example_input_shape"):
        value = getattr(model, attribute, None)
        if isinstance(value, (tuple, list, str)) and value:
            return parse_input_shape(value)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return parse_input_shape(cfg["input_size"])
    return None


def build_factory(spec: str, weights: str | os.PathLike = "none", *,
                  input_shape: str | Sequence[int] | None = None) -> LoadedModel:
    """Call the factory ``spec`` and return its model in eval mode, with the weights and input shape resolved."""
    factory = _resolve(spec)
    try:
        with seeded_init():
            model = factory()
    except ModelLoadError:
        raise
    except Exception as exc:  # the user's code may raise anything; its message is the useful part
        raise ModelLoadError(f"model factory {spec!r} raised {type(exc).__name__}: {str(exc)[:300]}") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    weights = str(weights)
    if weights not in ("none", "default"):
        load_weights(model, read_state_dict(weights))
    shape = parse_input_shape(input_shape) if input_shape else declared_input_shape(model)
    if shape is None:
        raise ModelLoadError(
            f"model factory {spec!r}: the model declares no input shape; give one (--input-shape 1,3,224,224, "
            "or an input_shape attribute on the model)"
        )
    label = weights if weights in ("none", "default") else Path(weights).name
    return LoadedModel(model.eval(), check_factory_spec(spec), label, shape)
