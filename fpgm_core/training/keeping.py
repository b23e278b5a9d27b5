"""Keep pruned filters exactly zero while a model trains: weights, bias, BatchNorm, gradients, optimizer state.

A pruned output channel is zero when its filter's weights and bias are zero and, where the layer
feeds a BatchNorm directly, that channel's BN weight and bias are zero too (as
:func:`fpgm_core.apply_masks` leaves it). Training must not bring it back: its gradients are zeroed
before each optimizer step, so momentum and Adam's moments never see it, and its entries are
multiplied by zero after each step, so an optimizer that moves zero weights (none of torch's do
once gradient and state are zero) cannot either.

Every kept entry is multiplied by exactly 1.0, which leaves it bit for bit as it was; each
parameter has one mask shaped to broadcast over it, applied with one fused ``_foreach_mul_``
call per step.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from ..layers import filter_index
from ..masking import check_masks, following_batchnorms

__all__ = ["MaskKeeper", "parameter_masks"]


def _weight_keep(layer: nn.Module, keep: Tensor) -> Tensor:
    """A float mask broadcasting over ``layer.weight``: 1 where the weight feeds a kept channel."""
    weight = layer.weight
    # A filter's weights share one value of the mask along every kernel dimension, so the mask
    # needs at most the weight's first two dims (ConvTranspose holds its filters along dim 1).
    lead = weight.shape[: min(2, weight.dim())]
    pruned = torch.zeros(lead, dtype=torch.bool, device=weight.device)
    pruned[filter_index(layer, keep.to(device=weight.device, dtype=torch.bool))] = True
    if pruned.dim() > 1 and bool((pruned == pruned[:, :1]).all()):
        pruned = pruned[:, :1]  # Conv/Linear: one flag per output row is enough
    shape = tuple(pruned.shape) + (1,) * (weight.dim() - pruned.dim())
    return (~pruned).reshape(shape).to(weight.dtype)


def parameter_masks(
    model: nn.Module, masks: Mapping[str, Tensor], *, batchnorms: Mapping[str, str] | None = None, include_norms: bool = True
) -> list[tuple[str, nn.Parameter, Tensor]]:
    """(parameter name, parameter, float keep-mask) for every parameter a pruned channel lives in.

    Layers whose masks keep everything are left out. ``batchnorms`` (layer → BN) defaults to
    :func:`fpgm_core.following_batchnorms`; ``include_norms=False`` leaves BN parameters out.
    """
    check_masks(model, masks)
    modules = dict(model.named_modules())
    pruned_layers = [name for name, keep in masks.items() if not bool(keep.all())]
    if include_norms and pruned_layers and batchnorms is None:
        batchnorms = following_batchnorms(model)
    entries: list[tuple[str, nn.Parameter, Tensor]] = []
    for name in pruned_layers:
        layer = modules[name]
        keep = masks[name].to(torch.bool)
        entries.append((f"{name}.weight", layer.weight, _weight_keep(layer, keep)))
        if layer.bias is not None:
            entries.append((f"{name}.bias", layer.bias, keep.to(device=layer.bias.device, dtype=layer.bias.dtype)))
        norm_name = (batchnorms or {}).get(name) if include_norms else None
        norm = modules.get(norm_name) if norm_name is not None else None
        if norm is not None and getattr(norm, "affine", False):
            for kind in ("weight", "bias"):
                parameter = getattr(norm, kind)
                entries.append((f"{norm_name}.{kind}", parameter, keep.to(device=parameter.device, dtype=parameter.dtype)))
    return entries


class MaskKeeper:
    """Holds a training model's pruned channels at exactly zero.

    Args:
        model: the model being trained (modified in place: it is the trainer's own copy).
        masks: layer name → bool keep-mask (True = kept).
        batchnorms: layer → the BatchNorm it feeds (found once by the caller and reused).
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor], *, batchnorms: Mapping[str, str] | None = None) -> None:
        self.model = model
        self._batchnorms = dict(following_batchnorms(model) if batchnorms is None else batchnorms)
        self.masks: dict[str, Tensor] = {}
        self._params: list[nn.Parameter] = []
        self._keeps: list[Tensor] = []
        self._conv_params: list[nn.Parameter] = []
        self._conv_keeps: list[Tensor] = []
        self.set_masks(masks)

    @property
    def batchnorms(self) -> dict[str, str]:
        """Layer → the BatchNorm it feeds directly."""
        return dict(self._batchnorms)

    def set_masks(self, masks: Mapping[str, Tensor]) -> None:
        """Use ``masks`` from now on (does not zero anything by itself: call :meth:`zero_weights`)."""
        self.masks = {name: keep.detach().to("cpu", torch.bool).clone() for name, keep in masks.items()}
        entries = parameter_masks(self.model, self.masks, batchnorms=self._batchnorms)
        self._params = [parameter for _, parameter, _ in entries]
        self._keeps = [keep for _, _, keep in entries]
        layers = {f"{name}.{kind}" for name in self.masks for kind in ("weight", "bias")}
        self._conv_params = [parameter for name, parameter, _ in entries if name in layers]
        self._conv_keeps = [keep for name, _, keep in entries if name in layers]

    @torch.no_grad()
    def zero_weights(self, *, include_norms: bool = True) -> None:
        """Zero every pruned entry; ``include_norms=False`` leaves the BatchNorm channels alone."""
        params, keeps = (self._params, self._keeps) if include_norms else (self._conv_params, self._conv_keeps)
        if params:
            torch._foreach_mul_(params, keeps)

    @torch.no_grad()
    def zero_grads(self) -> None:
        """Zero the gradients of every pruned entry (before the optimizer step)."""
        pairs = [(p.grad, keep) for p, keep in zip(self._params, self._keeps) if p.grad is not None]
        if pairs:
            torch._foreach_mul_([grad for grad, _ in pairs], [keep for _, keep in pairs])

    @torch.no_grad()
    def zero_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the optimizer's per-entry state (momentum, Adam's moments) of every pruned entry."""
        for parameter, keep in zip(self._params, self._keeps):
            for value in optimizer.state.get(parameter, {}).values():
                if isinstance(value, Tensor) and value.shape == parameter.shape:
                    value.mul_(keep.to(value.dtype))

    def pruned_entries(self) -> Iterable[tuple[nn.Parameter, Tensor]]:
        """(parameter, float keep-mask) pairs, for checks."""
        return zip(self._params, self._keeps)
