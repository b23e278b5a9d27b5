"""Which layers of a model FPGM can prune, and how each layer's weight splits into filters.

A filter is everything that produces one output channel. For Conv and Linear that is a slice of
the weight along dim 0. ConvTranspose stores its weight as (in, out / groups, *kernel), so its
filters lie along dim 1, per group: output channel ``g * out_per_group + j`` is produced by
``weight[g * in_per_group:(g + 1) * in_per_group, j]``. We prune output channels for every layer
type, so a mask always means "these output channels are removed".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "PRUNABLE_TYPES",
    "LayerInfo",
    "prunable_layers",
    "layer_filters",
    "filter_index",
    "output_layer_name",
    "output_layer_names",
    "output_width",
    "is_depthwise",
]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = _CONV_TYPES + _TRANSPOSED_TYPES + (nn.Linear,)


@dataclass(frozen=True)
class LayerInfo:
    """One prunable layer: where it is, what it is, and how many filters it has."""

    name: str
    type: str
    weight_shape: tuple[int, ...]
    filters: int
    groups: int
    is_output: bool
    filter_dim: int

    def to_dict(self) -> dict:
        """A JSON-ready dict of the record."""
        return asdict(self)


def output_width(module: nn.Module) -> int:
    """Output channels (Conv, ConvTranspose) or features (Linear) of a prunable layer: its filter count."""
    return int(module.out_features if isinstance(module, nn.Linear) else module.out_channels)


def is_depthwise(module: nn.Module) -> bool:
    """A convolution with one group per output channel (each filter reads only its own input channel)."""
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.out_channels > 1


def output_layer_names(model: nn.Module) -> tuple[str, ...]:
    """The model's output layers: every prunable layer whose output reaches a model output without
    passing another prunable layer (both heads of a model with two), found from the fx graph.

    Where fx cannot trace the model, the last prunable layer in registration order stands in (with a
    :class:`~fpgm_core.errors.TracingFallbackWarning`): torchvision registers its classifier last.
    """
    from .tracing import model_trace  # tracing builds on this module's layer types

    return model_trace(model).outputs


def output_layer_name(model: nn.Module) -> str | None:
    """The last-registered of the model's output layers (:func:`output_layer_names`), or None."""
    names = output_layer_names(model)
    return names[-1] if names else None


def prunable_layers(model: nn.Module) -> list[LayerInfo]:
    """Every Conv1d/2d/3d, ConvTranspose1d/2d/3d (grouped and depthwise too) and Linear, in order.

    The output layers (:func:`output_layer_names`, the model's classifiers) are flagged
    ``is_output``; plans leave them out unless a user includes them, because pruning them removes classes.
    """
    outputs = set(output_layer_names(model))
    records = []
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES) or getattr(module, "weight", None) is None:
            continue
        transposed = isinstance(module, _TRANSPOSED_TYPES)
        records.append(
            LayerInfo(
                name=name,
                type=type(module).__name__,
                weight_shape=tuple(module.weight.shape),
                filters=output_width(module),
                groups=int(getattr(module, "groups", 1)),
                is_output=name in outputs,
                filter_dim=1 if transposed else 0,
            )
        )
    return records


def layer_filters(module: nn.Module) -> Tensor:
    """The layer's weight arranged with one output channel's filter per row (N × ...).

    For Conv and Linear this is the weight itself; for ConvTranspose it is regrouped so that
    row ``o`` holds what produces output channel ``o``. Returned without copying where possible.
    """
    weight = module.weight
    if not isinstance(module, _TRANSPOSED_TYPES):
        return weight
    groups = module.groups
    in_total, out_per_group = weight.shape[0], weight.shape[1]
    kernel = weight.shape[2:]
    grouped = weight.reshape(groups, in_total // groups, out_per_group, *kernel)
    return grouped.transpose(1, 2).reshape(groups * out_per_group, in_total // groups, *kernel)


def filter_index(module: nn.Module, keep: Tensor) -> tuple[slice | Tensor, ...]:
    """An index into ``module.weight`` selecting the weights of the output channels where ``keep`` is False.

    Used to zero pruned filters in place on a copy: Conv/Linear index dim 0; ConvTranspose
    indexes dim 1 within each group, which is (out_per_group) wide, so the mask is folded per group.
    """
    pruned = ~keep.to(torch.bool)
    if not isinstance(module, _TRANSPOSED_TYPES):
        return (pruned,)
    groups = module.groups
    in_per_group = module.weight.shape[0] // groups
    out_per_group = module.weight.shape[1]
    # Row r of the weight belongs to group r // in_per_group; its columns are that group's channels.
    per_group = pruned.reshape(groups, out_per_group)
    rows = torch.arange(module.weight.shape[0], device=pruned.device) // in_per_group
    return (per_group[rows],)
