"""Fold keep-masks into a copy of a model: pruned filters output exactly zero, and a check that they do.

The input model is never modified. For each pruned output channel the filter's weights and bias
are zeroed, and so is that channel's weight and bias in every normalisation layer that directly
follows the layer (found from the data flow, :mod:`fpgm_core.tracing`) — otherwise the norm would
turn the zero back into ``bias − mean·γ/σ`` and the channel would live on. A BatchNorm without
affine parameters gets that channel's running mean zeroed instead (``(0 − 0)/σ = 0``).

:func:`verify_masked` runs the masked model once with forward hooks and confirms that every pruned
channel is exactly zero at its layer's output and after every norm that reads that output; the
masked exports (file and dashboard) call it before anything is written.
"""

from __future__ import annotations

import warnings
from typing import Mapping

import torch
from torch import Tensor, nn

from .errors import ExportError, FpgmWarning, PlanError
from .layers import PRUNABLE_TYPES, filter_index, prunable_layers
from .tracing import MODEL_LOCK, NORM_TYPES, copy_model, model_trace

__all__ = [
    "MaskCheckError",
    "UncheckedMaskWarning",
    "following_norms",
    "following_batchnorms",
    "apply_masks",
    "check_masks",
    "verify_masked",
    "guess_input_shape",
]


class MaskCheckError(ExportError):
    """A masked model's pruned channels are not zero where they must be; nothing was exported."""


class UncheckedMaskWarning(FpgmWarning):
    """A masked model was checked from its weights only: no input shape was known for a forward pass."""


def following_norms(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Map each prunable layer's name to the normalisation layers that directly consume its output.

    Found from the torch.fx data flow whatever class implements the norm (``BatchNormAct2d`` and
    other BatchNorm subclasses, GroupNorm, channel LayerNorm, norms calling ``F.*_norm``); for models
    fx cannot trace, registration order stands in, with a TracingFallbackWarning.
    """
    return dict(model_trace(model).norms)


def following_batchnorms(model: nn.Module) -> dict[str, str]:
    """Map each prunable layer's name to the BatchNorm (any ``_BatchNorm`` subclass) that directly follows it."""
    modules = dict(model.named_modules())
    found = {}
    for layer, norms in following_norms(model).items():
        batchnorms = [n for n in norms if isinstance(modules.get(n), nn.modules.batchnorm._BatchNorm)]
        if batchnorms:
            found[layer] = batchnorms[0]
    return found


def check_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Raise PlanError unless every mask names a prunable layer and has one entry per filter."""
    filters = {layer.name: layer.filters for layer in prunable_layers(model)}
    for name, keep in masks.items():
        if name not in filters:
            raise PlanError(f"mask for unknown layer {name!r}: not a prunable layer of this model")
        if keep.dim() != 1 or keep.shape[0] != filters[name]:
            raise PlanError(f"mask for layer {name!r} has shape {tuple(keep.shape)}, expected ({filters[name]},)")


def _zero_norm_channels(norm: nn.Module, params: tuple[str | None, str | None], pruned: Tensor) -> None:
    weight_name, bias_name = params[0], params[1]
    for attr in (weight_name, bias_name):
        tensor = getattr(norm, attr, None) if attr else None
        if isinstance(tensor, Tensor):
            tensor[pruned.to(tensor.device)] = 0
    running_mean = getattr(norm, "running_mean", None)
    if weight_name is None and isinstance(norm, nn.modules.batchnorm._BatchNorm) and isinstance(running_mean, Tensor):
        running_mean[pruned.to(running_mean.device)] = 0


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Return a NEW model whose pruned filters (mask False) output exactly zero.

    Args:
        model: left untouched.
        masks: layer name → bool tensor with one entry per output channel, True = kept.
    """
    check_masks(model, masks)
    trace = model_trace(model) if masks else None  # traced on the original: cached, and carried to the copy
    pruned_model = copy_model(model)
    modules = dict(pruned_model.named_modules())
    with torch.no_grad():
        for name, keep in masks.items():
            layer = modules[name]
            keep = keep.to(device=layer.weight.device, dtype=torch.bool)
            if bool(keep.all()):
                continue
            layer.weight[filter_index(layer, keep)] = 0
            if layer.bias is not None:
                layer.bias[~keep] = 0
            for norm_name in trace.norms.get(name, ()):
                _zero_norm_channels(modules[norm_name], trace.norm_params[norm_name], ~keep)
    return pruned_model


def guess_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The input shape a model declares (timm's ``pretrained_cfg["input_size"]``, an ``input_shape`` attribute), or None."""
    declared = getattr(model, "input_shape", None)
    if isinstance(declared, (tuple, list)) and all(isinstance(d, int) for d in declared):
        return tuple(declared)
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        size = cfg.get("input_size") if isinstance(cfg, Mapping) else None
        if isinstance(size, (tuple, list)) and all(isinstance(d, int) for d in size):
            return (1, *size)
    return None


def _channel_dim(module: nn.Module) -> int:
    return -1 if isinstance(module, nn.Linear) else 1


def _nonzero(output: Tensor, dim: int, pruned: Tensor) -> int:
    """How many pruned channels of ``output`` (along ``dim``) hold any non-zero value."""
    moved = output.detach().movedim(dim, 0)[pruned.to(output.device)]
    return int(moved.reshape(moved.shape[0], -1).ne(0).any(dim=1).sum()) if moved.numel() else 0


def _is_norm_like(module: nn.Module) -> bool:
    if isinstance(module, NORM_TYPES):
        return True
    # Norms of other libraries by name, as long as they are not containers holding prunable layers.
    return "norm" in type(module).__name__.lower() and not any(isinstance(m, PRUNABLE_TYPES) for m in module.modules())


def _weights_only_problems(masked: nn.Module, masks: Mapping[str, Tensor]) -> list[str]:
    modules = dict(masked.named_modules())
    trace = model_trace(masked)
    problems = []
    for name, keep in masks.items():
        pruned = ~keep.to(torch.bool)
        layer = modules[name]
        if bool(layer.weight.detach()[filter_index(layer, keep.to(torch.bool))].ne(0).any()):
            problems.append(f"layer {name!r} keeps non-zero weights in pruned filters")
        for norm_name in trace.norms.get(name, ()):
            weight_name = trace.norm_params[norm_name][0]
            weight = getattr(modules[norm_name], weight_name, None) if weight_name else None
            if isinstance(weight, Tensor) and bool(weight.detach()[pruned].ne(0).any()):
                problems.append(f"norm {norm_name!r} after layer {name!r} keeps non-zero weights in pruned channels")
    return problems


def verify_masked(
    masked: nn.Module,
    masks: Mapping[str, Tensor],
    input_shape: tuple[int, ...] | None,
    *,
    seed: int = 0,
) -> None:
    """Raise MaskCheckError unless every pruned channel of ``masked`` is exactly zero where it must be.

    One forward pass on seeded random input of ``input_shape`` (in eval mode; the model's mode is
    restored), with forward hooks: each pruned layer's pruned output channels must be zero, and so
    must those channels at the output of every norm that follows it in the data flow and of every
    norm-like module whose input is that very output tensor (so a norm the data flow missed is
    caught, whatever its class). Where fx could not trace the model, each norm matched by
    registration order must also be seen reading its layer's output. Without an input shape (none
    given, none declared) only the weights are checked, with an :class:`UncheckedMaskWarning`.
    """
    pruned_masks = {name: keep.to(torch.bool) for name, keep in masks.items() if not bool(keep.all())}
    if not pruned_masks:
        return
    shape = input_shape or guess_input_shape(masked)
    if shape is None:
        problems = _weights_only_problems(masked, pruned_masks)
        if problems:
            raise MaskCheckError(f"the masked model is not pruned where its masks say: {problems[0]}; nothing was exported")
        warnings.warn(
            "no input shape is known for this model, so its masked export was checked from its weights only, "
            "not with a forward pass; pass input_shape to check the channels themselves",
            UncheckedMaskWarning,
            stacklevel=2,
        )
        return
    trace = model_trace(masked)
    modules = dict(masked.named_modules())
    names = {module: name for name, module in modules.items()}
    outputs: dict[int, tuple[str, Tensor]] = {}  # id(output tensor) → (layer, output); kept alive meanwhile
    problems: list[str] = []
    expected_norms = {norm: layer for layer in pruned_masks for norm in trace.norms.get(layer, ())}
    seen_reading: set[tuple[str, str]] = set()

    def layer_hook(module: nn.Module, inputs: tuple, output: object) -> None:
        name = names[module]
        if isinstance(output, Tensor):
            outputs[id(output)] = (name, output)
            count = _nonzero(output, _channel_dim(module), ~pruned_masks[name])
            if count:
                problems.append(f"{count} pruned channel(s) of layer {name!r} are not zero at its output")

    def norm_hook(module: nn.Module, inputs: tuple, output: object) -> None:
        name = names[module]
        source = outputs.get(id(inputs[0])) if inputs and isinstance(inputs[0], Tensor) else None
        if source is not None and source[1] is inputs[0]:
            seen_reading.add((source[0], name))
        layer = source[0] if source is not None and source[1] is inputs[0] else expected_norms.get(name)
        if layer is None or not isinstance(output, Tensor) or layer not in pruned_masks:
            return
        dim = _channel_dim(modules[layer])
        if name in trace.norms.get(layer, ()) and isinstance(modules[name], nn.LayerNorm | nn.RMSNorm):
            dim = -1  # a LayerNorm after a channel permute normalises the last dim: our channels
        if output.dim() == 0 or output.shape[dim] != pruned_masks[layer].numel():
            return
        count = _nonzero(output, dim, ~pruned_masks[layer])
        if count:
            problems.append(
                f"{count} pruned channel(s) of layer {layer!r} are not zero after {type(module).__name__} {name!r}"
            )

    handles = [modules[name].register_forward_hook(layer_hook) for name in pruned_masks]
    handles += [m.register_forward_hook(norm_hook) for n, m in modules.items() if n and _is_norm_like(m)]
    parameter = next(iter(masked.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    sample = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)
    training = masked.training
    try:
        masked.eval()
        with MODEL_LOCK.shared(), torch.no_grad():
            masked(sample)
    except Exception as exc:  # the model's own forward: any error means the check could not run
        raise MaskCheckError(
            f"the masked model could not be checked: its forward pass failed on an input of shape {tuple(shape)} "
            f"({type(exc).__name__}: {str(exc)[:160]}); nothing was exported"
        ) from exc
    finally:
        masked.train(training)
        for handle in handles:
            handle.remove()
        outputs.clear()
    if not trace.traced:
        for norm, layer in expected_norms.items():
            if (layer, norm) not in seen_reading:
                problems.append(
                    f"registration order matched norm {norm!r} to layer {layer!r} (fx could not trace the model), "
                    "but the forward pass shows that norm does not read that layer's output"
                )
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MaskCheckError(f"the masked model is not pruned where its masks say: {problems[0]}{more}; nothing was exported")
