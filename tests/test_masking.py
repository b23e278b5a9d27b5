"""fpgm_core.masking: a new model whose pruned channels output exactly zero; the input untouched."""

import copy

import torch
import torchvision
from torch import nn

from fpgm_core import SparsityPlan, apply_masks, following_batchnorms, plan_masks


class Chain(nn.Module):
    """conv → BN → ReLU → conv, the pattern whose pruned channels must vanish exactly."""

    def __init__(self, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.relu(self.bn(self.conv1(x))))


def _randomised_chain():
    torch.manual_seed(0)
    chain = Chain().eval()
    with torch.no_grad():
        chain.bn.running_mean.uniform_(-1, 1)
        chain.bn.running_var.uniform_(0.5, 2)
        chain.bn.weight.uniform_(0.5, 1.5)
        chain.bn.bias.uniform_(-1, 1)
    return chain


def test_masked_chain_equals_hand_built_model_without_those_channels():
    chain = _randomised_chain()
    keep = torch.ones(8, dtype=torch.bool)
    keep[[1, 4, 6]] = False
    masked = apply_masks(chain, {"conv1": keep})

    small = Chain(width=5).eval()
    with torch.no_grad():
        small.conv1.weight.copy_(chain.conv1.weight[keep])
        small.conv1.bias.copy_(chain.conv1.bias[keep])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(small.bn, name).copy_(getattr(chain.bn, name)[keep])
        small.conv2.weight.copy_(chain.conv2.weight[:, keep])
        small.conv2.bias.copy_(chain.conv2.bias)
    sample = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(masked(sample), small(sample), rtol=1e-5, atol=1e-5)
    # The pruned channels are exactly zero after BN: nothing leaks into conv2.
    hidden = masked.relu(masked.bn(masked.conv1(sample)))
    assert torch.all(hidden[:, ~keep] == 0)


def test_zeros_exactly_where_masked_and_input_model_untouched():
    chain = _randomised_chain()
    before = copy.deepcopy(chain.state_dict())
    keep = torch.tensor([True, False, True, True, False, True, True, True])
    masked = apply_masks(chain, {"conv1": keep})
    assert masked is not chain
    for key, value in chain.state_dict().items():
        assert torch.equal(value, before[key]), f"input model changed at {key}"
    state = masked.state_dict()
    for key in ("conv1.weight", "conv1.bias", "bn.weight", "bn.bias"):
        assert torch.all(state[key][~keep] == 0), key
        assert torch.equal(state[key][keep], before[key][keep]), key
    assert torch.equal(state["conv2.weight"], before["conv2.weight"])
    assert torch.equal(state["bn.running_mean"], before["bn.running_mean"])


def test_resnet_masked_channels_are_zero_in_the_activations():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    masks = plan_masks(model, SparsityPlan(sparsity=0.5), device="cpu")
    masked = apply_masks(model, masks)
    seen = {}
    bn_of = following_batchnorms(masked)
    modules = dict(masked.named_modules())
    hooks = [modules[bn_of[name]].register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.clone())) for name in masks]
    masked(torch.randn(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    for name, keep in masks.items():
        assert torch.all(seen[name][:, ~keep] == 0), name


def test_batchnorm_fallback_for_untraceable_models():
    class Branchy(Chain):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow defeats torch.fx
                x = x * 2
            return super().forward(x)

    assert following_batchnorms(Branchy()) == {"conv1": "bn"}
    assert following_batchnorms(Chain()) == {"conv1": "bn"}


def test_grouped_transposed_conv_masks_output_channels():
    layer = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, groups=2), nn.BatchNorm2d(6)).eval()
    keep = torch.tensor([True, False, True, True, True, False])
    masked = apply_masks(layer, {"0": keep})
    out = masked(torch.randn(1, 4, 5, 5))
    assert torch.all(out[:, ~keep] == 0)
    assert torch.all(out[:, keep].abs().sum((0, 2, 3)) > 0)
