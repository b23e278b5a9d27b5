"""Twenty timm architectures nobody here wrote, built as a new user would, and an oracle for masked zeros.

Shared by ``tests/test_zoo.py`` (assertions) and ``bench/bench_slim.py --part timm`` (the README's
table). Models are built with ``timm.create_model(name, pretrained=False)`` (random init), at a
smaller input where the architecture allows (``img_size`` for the transformers), with every
norm's running statistics and affine parameters randomised so that a norm left unmasked shows: a
"pruned" channel would come out of it as ``bias − mean·γ/σ``, not zero.

The oracle does not use the engine's data flow: it hooks every prunable layer and every module
whose class is a norm (by type or by name), and wherever a norm's input *is* a pruned layer's
output tensor, checks the pruned channels for exact zeros after that norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import timm
import torch
from torch import Tensor, nn

__all__ = ["ZooModel", "ZOO", "EXPECTED_SLIM_ERRORS", "build", "randomise_norms", "unzeroed_channels", "SLIM_TIME_LIMIT_S"]

# Long enough for the slowest healthy analysis here (inception_v3: ~15 s on a busy 2-core machine),
# short enough that rexnet_100's endless group search costs the test run little.
SLIM_TIME_LIMIT_S = 60.0


@dataclass(frozen=True)
class ZooModel:
    name: str
    size: int = 96
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.size, self.size)


ZOO: tuple[ZooModel, ...] = (
    ZooModel("resnet50d"),
    ZooModel("resnext50_32x4d"),
    ZooModel("efficientnet_b0"),
    ZooModel("mobilenetv3_large_100"),
    ZooModel("convnext_tiny"),
    ZooModel("regnety_016"),
    ZooModel("ghostnet_100"),
    ZooModel("densenet121"),
    ZooModel("vit_tiny_patch16_224", 64, {"img_size": 64}),
    ZooModel("deit_tiny_patch16_224", 64, {"img_size": 64}),
    ZooModel("mobilevit_s", 128),
    ZooModel("repvgg_a0"),
    ZooModel("cspdarknet53"),
    ZooModel("dla34"),
    ZooModel("res2net50_26w_4s"),
    ZooModel("hrnet_w18_small"),
    ZooModel("swin_tiny_patch4_window7_224", 128, {"img_size": 128, "window_size": 4}),
    ZooModel("inception_v3"),
    ZooModel("levit_128s", 128, {"img_size": 128}),
    ZooModel("rexnet_100"),
)

# What stops the two models that do not slim, as the SlimError says it.
EXPECTED_SLIM_ERRORS = {
    # Torch-Pruning maps channels wrongly through LeViT's token subsampling (a strided slice of a view).
    "levit_128s": "the slimmed model no longer runs",
    # Torch-Pruning's group search never ends on rexnet's partial-channel residual adds.
    "rexnet_100": "did not finish within",
}


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics (mean in [−1, 1], var in [0.5, 1.5]) and affine parameters for every norm."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not _is_norm(module):
                continue
            for name in ("running_mean", "running_var"):
                buffer = getattr(module, name, None)
                if isinstance(buffer, Tensor) and buffer.is_floating_point():
                    values = torch.rand(buffer.shape, generator=generator)
                    buffer.copy_(values * 2 - 1 if name == "running_mean" else values + 0.5)
            for name, low in (("weight", 0.5), ("bias", -0.5)):
                parameter = getattr(module, name, None)
                if isinstance(parameter, Tensor) and parameter.dim() == 1:
                    parameter.copy_(torch.rand(parameter.shape, generator=generator) + low)
    return model


def build(spec: ZooModel) -> nn.Module:
    """The architecture at random init (seed 0), its norms randomised, in eval mode."""
    torch.manual_seed(0)
    return randomise_norms(timm.create_model(spec.name, pretrained=False, **spec.kwargs)).eval()


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)):
        return True
    # timm's norm+act modules hold only an activation and a dropout; containers hold layers.
    return "norm" in type(module).__name__.lower() and not any(isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) for m in module.modules())


def unzeroed_channels(masked: nn.Module, masks: Mapping[str, Tensor], input_shape: tuple[int, ...]) -> tuple[list[str], int]:
    """Run ``masked`` once; list every pruned channel found non-zero after its layer or a norm reading it.

    Returns the problems and how many (layer, norm) pairs were checked.
    """
    modules = dict(masked.named_modules())
    names = {module: name for name, module in modules.items()}
    pruned = {name: ~keep.to(torch.bool) for name, keep in masks.items() if not bool(keep.all())}
    outputs: dict[int, tuple[str, Tensor]] = {}
    problems: list[str] = []
    pairs: set[tuple[str, str]] = set()

    def channel_dim(name: str) -> int:
        return -1 if isinstance(modules[name], nn.Linear) else 1

    def nonzero(tensor: Tensor, dim: int, which: Tensor) -> bool:
        return bool(tensor.movedim(dim, 0)[which].ne(0).any())

    def layer_hook(module, inputs, output):
        name = names[module]
        outputs[id(output)] = (name, output)
        if nonzero(output, channel_dim(name), pruned[name]):
            problems.append(f"{name}: pruned channels non-zero at its output")

    def norm_hook(module, inputs, output):
        source = outputs.get(id(inputs[0])) if inputs and isinstance(inputs[0], Tensor) else None
        if source is None or source[1] is not inputs[0] or not isinstance(output, Tensor) or output.shape != inputs[0].shape:
            return
        layer = source[0]
        pairs.add((layer, names[module]))
        if nonzero(output, channel_dim(layer), pruned[layer]):
            problems.append(f"{layer}: pruned channels non-zero after {type(module).__name__} {names[module]}")

    handles = [modules[name].register_forward_hook(layer_hook) for name in pruned]
    handles += [m.register_forward_hook(norm_hook) for n, m in modules.items() if n and _is_norm(m)]
    try:
        with torch.no_grad():
            masked.eval()(torch.randn(input_shape, generator=torch.Generator().manual_seed(5)))
    finally:
        for handle in handles:
            handle.remove()
    return problems, len(pairs)
