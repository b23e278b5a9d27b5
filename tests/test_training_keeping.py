"""fpgm_core.training.keeping: pruned weights, bias, BatchNorm channels, gradients and optimizer state stay zero.

Checked the way a user's model would break: with forward hooks on the pruned layer and on the
BatchNorm after it (channels must come out exactly zero, in train and eval mode), BatchNorm
statistics randomised so a missed BN shows, and the optimizer's state read entry by entry.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from fpgm_core import following_batchnorms, prunable_layers
from fpgm_core.layers import filter_index
from fpgm_core.training import MaskKeeper, parameter_masks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Mixed(nn.Module):
    """Conv → BN, a grouped conv, a ConvTranspose with groups, a Conv1d path and a Linear: every filter layout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.grouped_bn = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2)
        self.up_bn = nn.BatchNorm2d(6)
        self.line = nn.Conv1d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.grouped_bn(self.grouped(x)))
        x = torch.relu(self.up_bn(self.up(x)))
        x = self.line(x.flatten(2)).mean(-1)
        return self.fc(x)


def _randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-1, 1)
    return model


def _masks(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for layer in prunable_layers(model):
        if layer.is_output:
            continue
        keep = torch.ones(layer.filters, dtype=torch.bool)
        keep[torch.randperm(layer.filters, generator=generator)[: max(1, layer.filters // 3)]] = False
        masks[layer.name] = keep
    return masks


def _zero_outputs_checker(model: nn.Module, masks, batchnorms):
    """Forward hooks recording whether any pruned channel of a layer (or of the BN it feeds) came out non-zero."""
    modules = dict(model.named_modules())
    leaks: list[str] = []
    handles = []

    def hook_for(name: str, keep: torch.Tensor):
        def hook(module, inputs, output):
            if bool(output[:, ~keep].ne(0).any()):
                leaks.append(name)
        return hook

    for name, keep in masks.items():
        handles.append(modules[name].register_forward_hook(hook_for(name, keep)))
        if name in batchnorms:
            handles.append(modules[batchnorms[name]].register_forward_hook(hook_for(batchnorms[name], keep)))
    return leaks, handles


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_pruned_channels_stay_exactly_zero_after_every_step(optimizer_name):
    model = _randomised(Mixed())
    masks = _masks(model)
    batchnorms = following_batchnorms(model)
    assert set(batchnorms) == {"conv", "grouped", "up"}
    keeper = MaskKeeper(model, masks, batchnorms=batchnorms)
    keeper.zero_weights()
    optimizer = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
                 if optimizer_name == "sgd" else torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2))
    start = copy.deepcopy(model.state_dict())
    leaks, handles = _zero_outputs_checker(model, masks, batchnorms)
    generator = torch.Generator().manual_seed(1)
    try:
        for step in range(12):
            model.train()
            x = torch.randn(4, 3, 6, 6, generator=generator)
            loss = model(x).square().mean()
            optimizer.zero_grad()
            loss.backward()
            keeper.zero_grads()
            optimizer.step()
            keeper.zero_weights()
            model.eval()
            with torch.no_grad():
                model(x)
            for parameter, keep in keeper.pruned_entries():
                assert bool((parameter.detach() * (1 - keep)).eq(0).all())
                for value in optimizer.state[parameter].values():
                    if isinstance(value, torch.Tensor) and value.shape == parameter.shape:
                        assert bool((value * (1 - keep)).eq(0).all()), f"optimizer state leaks at step {step}"
    finally:
        for handle in handles:
            handle.remove()
    assert not leaks, f"pruned channels came out non-zero at {sorted(set(leaks))}"
    # Training happened: the kept weights moved.
    assert not torch.equal(start["conv.weight"], model.state_dict()["conv.weight"])


def test_kept_entries_train_exactly_as_with_pruning_by_index():
    """The fused multiply equals zeroing by index: kept weights bit-identical to the hand-written reference."""
    torch.manual_seed(0)
    ours, reference = _randomised(Mixed()), None
    reference = copy.deepcopy(ours)
    masks = _masks(ours, seed=3)
    keeper = MaskKeeper(ours, masks)
    keeper.zero_weights()
    modules = dict(reference.named_modules())
    batchnorms = following_batchnorms(reference)

    def zero_by_index(attribute: str) -> None:
        with torch.no_grad():
            for name, keep in masks.items():
                layer = modules[name]
                targets = [(layer.weight, filter_index(layer, keep))]
                if layer.bias is not None:
                    targets.append((layer.bias, (~keep,)))
                if name in batchnorms:
                    norm = modules[batchnorms[name]]
                    targets += [(norm.weight, (~keep,)), (norm.bias, (~keep,))]
                for parameter, index in targets:
                    tensor = parameter if attribute == "data" else parameter.grad
                    tensor[index] = 0

    zero_by_index("data")
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (ours, reference)]
    generator = torch.Generator().manual_seed(2)
    for _ in range(5):
        x = torch.randn(4, 3, 6, 6, generator=generator)
        for model, optimizer in zip((ours, reference), optimizers):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            if model is ours:
                keeper.zero_grads()
                optimizer.step()
                keeper.zero_weights()
            else:
                zero_by_index("grad")
                optimizer.step()
                zero_by_index("data")
    for key, value in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_new_masks_clear_the_optimizer_state_they_prune():
    model = _randomised(Mixed())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):  # momentum everywhere, as after epochs of training under other masks
        optimizer.zero_grad()
        model(torch.randn(2, 3, 6, 6)).square().mean().backward()
        optimizer.step()
    masks = _masks(model, seed=5)
    keeper = MaskKeeper(model, masks)
    keeper.zero_weights()
    keeper.zero_optimizer_state(optimizer)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 6, 6)).square().mean().backward()
        keeper.zero_grads()
        optimizer.step()
        # No zero_weights here: with the state cleared, the optimizer itself keeps them at zero.
    for parameter, keep in keeper.pruned_entries():
        assert bool((parameter.detach() * (1 - keep)).eq(0).all())


def test_a_torchvision_resnet_keeps_its_pruned_channels_dark():
    model = _randomised(torchvision.models.resnet18(num_classes=10)).train()
    masks = _masks(model, seed=1)
    batchnorms = following_batchnorms(model)
    keeper = MaskKeeper(model, masks, batchnorms=batchnorms)
    keeper.zero_weights()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    leaks, handles = _zero_outputs_checker(model, masks, batchnorms)
    try:
        for _ in range(2):
            optimizer.zero_grad()
            model(torch.randn(2, 3, 32, 32)).logsumexp(1).mean().backward()
            keeper.zero_grads()
            optimizer.step()
            keeper.zero_weights()
    finally:
        for handle in handles:
            handle.remove()
    assert not leaks
    # Every conv of a resnet feeds a BatchNorm: each of its pruned channels lives in 3 parameters.
    names = [name for name, _, _ in parameter_masks(model, masks)]
    assert all(f"{batchnorms[layer]}.weight" in names for layer in masks if layer in batchnorms)


def test_layers_whose_masks_keep_everything_cost_nothing():
    model = Mixed()
    masks = {layer.name: torch.ones(layer.filters, dtype=torch.bool) for layer in prunable_layers(model)}
    assert parameter_masks(model, masks) == []
