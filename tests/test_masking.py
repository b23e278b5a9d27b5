"""fpgm_core.masking: a new model whose pruned channels output exactly zero; the input untouched."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from dashboard.summary import summarize
from fpgm_core import (
    MaskCheckError,
    SparsityPlan,
    TracingFallbackWarning,
    apply_masks,
    export_masked,
    following_batchnorms,
    following_norms,
    layer_flops,
    make_recipe,
    plan_counts,
    plan_masks,
    prunable_layers,
    verify_masked,
)


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


class BatchNormAct(nn.BatchNorm2d):
    """A BatchNorm subclass outside torch.nn with its activation inside, as timm's BatchNormAct2d:
    fx traces into its forward, so it never shows up as a module call."""

    def __init__(self, width):
        super().__init__(width)
        self.act = nn.ReLU()

    def forward(self, x):
        x = nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return self.act(x)


class ChannelsLastNorm(nn.Module):
    """A LayerNorm over channels that permutes around F.layer_norm, as timm's LayerNorm2d (not a torch.nn subclass)."""

    def __init__(self, width):
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(width) + 0.5)
        self.beta = nn.Parameter(torch.rand(width) - 0.5)

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, (x.shape[-1],), self.gamma, self.beta)
        return x.permute(0, 3, 1, 2)


class Norms(nn.Module):
    """One conv before each kind of norm a pruned layer can feed."""

    def __init__(self, width=8):
        super().__init__()
        self.c_bnact = nn.Conv2d(3, width, 3, padding=1)
        self.bnact = BatchNormAct(width)
        self.c_gn = nn.Conv2d(width, width, 3, padding=1)
        self.gn = nn.GroupNorm(2, width)
        self.c_ln = nn.Conv2d(width, width, 1)
        self.ln = nn.LayerNorm(width)
        self.c_fln = nn.Conv2d(width, width, 1)
        self.fln = ChannelsLastNorm(width)
        self.c_after_act = nn.Conv2d(width, width, 1)
        self.act = nn.ReLU()
        self.bn_after_act = nn.BatchNorm2d(width)
        self.c_plain_bn = nn.Conv2d(width, width, 1)
        self.plain_bn = nn.BatchNorm2d(width, affine=False)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        x = self.gn(self.c_gn(self.bnact(self.c_bnact(x))))
        x = self.ln(self.c_ln(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.fln(self.c_fln(x))
        x = self.bn_after_act(self.act(self.c_after_act(x)))
        x = self.plain_bn(self.c_plain_bn(x))
        return self.head(x.mean((2, 3)))


def _randomise_norms(model):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) * 2 - 1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            for name in ("weight", "bias"):
                parameter = getattr(module, name, None)
                if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)) and parameter is not None:
                    parameter.copy_(torch.rand(parameter.shape, generator=generator) + (0.5 if name == "weight" else -0.5))
    return model


def test_every_kind_of_norm_after_a_pruned_layer_is_found_and_zeroed():
    model = _randomise_norms(Norms()).eval()
    assert following_norms(model) == {
        "c_bnact": ("bnact",), "c_gn": ("gn",), "c_ln": ("ln",), "c_fln": ("fln",),
        "c_after_act": ("bn_after_act",), "c_plain_bn": ("plain_bn",),
    }
    keep = torch.tensor([True, False, True, True, False, True, True, False])
    masks = {name: keep for name in following_norms(model)}
    masked = apply_masks(model, masks)
    after = {}
    hooks = [getattr(masked, n).register_forward_hook(lambda m, i, o, n=n: after.__setitem__(n, o))
             for n in ("bnact", "gn", "fln", "bn_after_act", "plain_bn")]
    hooks.append(masked.ln.register_forward_hook(lambda m, i, o: after.__setitem__("ln", o.permute(0, 3, 1, 2))))
    with torch.no_grad():
        masked(torch.randn(2, 3, 6, 6))
    for hook in hooks:
        hook.remove()
    for name, output in after.items():
        assert torch.all(output[:, ~keep] == 0), name
        assert torch.all(output[:, keep].abs().sum((0, 2, 3)) > 0), name
    verify_masked(masked, masks, (2, 3, 6, 6))


def test_the_check_names_a_norm_that_masking_cannot_zero():
    class NoAffineGroupNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.norm = nn.GroupNorm(2, 4, affine=False)  # (0 − mean of the group)/σ is not zero

        def forward(self, x):
            return self.norm(self.conv(x))

    model = NoAffineGroupNorm().eval()
    masks = {"conv": torch.tensor([True, False, True, True])}
    with pytest.raises(MaskCheckError, match=r"layer 'conv' are not zero after GroupNorm 'norm'"):
        verify_masked(apply_masks(model, masks), masks, (1, 3, 5, 5))


class WrongOrder(nn.Module):
    """Untraceable (control flow on values), with each BatchNorm registered right after the OTHER conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        if x.sum() > 0:
            x = x * 1.0
        return self.head(self.bn2(self.conv2(x)).mean((2, 3)))


def test_untraceable_model_warns_records_and_the_check_catches_a_wrong_order_guess(tmp_path):
    model = _randomise_norms(WrongOrder()).eval()
    with pytest.warns(TracingFallbackWarning, match=r"could not trace WrongOrder \(TraceError.*registration order"):
        guessed = following_norms(model)
    assert guessed == {"conv1": ("bn2",), "conv2": ("bn1",)}  # the guess, wrong on both counts
    layers = prunable_layers(model)
    plan = SparsityPlan(sparsity=0.25)
    recipe = make_recipe(model, plan, plan_counts(layers, plan), layers, arch="wrong-order", weights="none")
    assert recipe["tracing"]["data_flow"] is False and recipe["tracing"]["method"] == "registration order"
    assert "TraceError" in recipe["tracing"]["error"]
    masks = plan_masks(model, plan)
    with pytest.raises(MaskCheckError, match="not pruned where its masks say"):
        export_masked(model, masks, recipe, tmp_path / "m.safetensors", input_shape=(1, 3, 6, 6))
    assert list(tmp_path.iterdir()) == []
    summary = summarize(model, plan, {}, (1, 3, 6, 6), layer_flops(model, (1, 3, 6, 6)), {})
    assert summary.tracing_note is not None and "registration order" in summary.tracing_note
    traced = Chain()
    assert summarize(traced, plan, {}, (1, 3, 6, 6), layer_flops(traced, (1, 3, 6, 6)), {}).tracing_note is None
