"""fpgm_core.masks: our masks equal PyTorch FPGMPruner's, layer by layer, on real models."""

import pytest
import torch
import torchvision
from torch import nn

from fpgm_core import PlanError, SparsityPlan, fpgm_mask, layer_filters, plan_masks, prunable_layers, prune_count
from seed_oracle import differs_only_at_near_ties, seed_mask

MODELS = ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5"]
SPARSITIES = [0.0, 0.1, 0.3, 0.5, 0.75, 1.0]


@pytest.fixture(scope="module", params=MODELS)
def torchvision_model(request):
    torch.manual_seed(0)
    return request.param, torchvision.models.get_model(request.param, weights=None).eval()


@pytest.mark.parametrize("metric,dist", [("l1", 1), ("l2", 2)])
def test_every_layer_mask_equals_seed(torchvision_model, metric, dist):
    name, model = torchvision_model
    modules = dict(model.named_modules())
    compared, identical = 0, 0
    for layer in prunable_layers(model):
        weight = layer_filters(modules[layer.name])
        for sparsity in SPARSITIES:
            ours = fpgm_mask(weight, sparsity, metric, device="cpu")
            reference = seed_mask(weight, sparsity, dist)
            identical += bool(torch.equal(ours, reference))
            assert differs_only_at_near_ties(ours, reference, weight, dist), f"{name}.{layer.name} {metric} s={sparsity}"
            compared += 1
    assert compared >= 6 * len(SPARSITIES)
    # Near ties at the cut are rare: nearly every (layer, sparsity) mask is bit-identical.
    assert identical >= 0.97 * compared, f"{identical} of {compared} masks identical"


def test_uniform_plan_masks_equal_seed_per_layer(torchvision_model):
    name, model = torchvision_model
    modules = dict(model.named_modules())
    masks = plan_masks(model, SparsityPlan(sparsity=0.4, metric="l2"), device="cpu")
    for layer_name, keep in masks.items():
        weight = layer_filters(modules[layer_name])
        assert differs_only_at_near_ties(keep, seed_mask(weight, 0.4, 2), weight, 2), layer_name


@pytest.mark.parametrize("filters,sparsity", [(3, 0.5), (5, 0.5), (7, 0.5), (9, 0.5), (5, 0.3), (13, 0.5), (1, 0.5)])
@pytest.mark.parametrize("metric,dist", [("l1", 1), ("l2", 2)])
def test_half_counts_round_like_the_seed(filters, sparsity, metric, dist):
    weight = torch.randn(filters, 3, 3, 3, generator=torch.Generator().manual_seed(filters))
    reference = seed_mask(weight, sparsity, dist)
    ours = fpgm_mask(weight, sparsity, metric, device="cpu")
    assert int((~ours).sum()) == int((~reference).sum()) == prune_count(sparsity, filters)
    assert torch.equal(ours, reference)


def test_prune_count_rounds_half_to_even_as_python_round():
    assert [prune_count(0.5, n) for n in (1, 3, 5, 7)] == [0, 2, 2, 4]
    assert prune_count(0.0, 10) == 0 and prune_count(1.0, 10) == 10 and prune_count(1e-9, 10) == 0


def test_three_filter_example_prunes_the_median_not_the_smallest():
    # PyTorch's own unit test: filters of 3.0, 2.0 and 0.1. Norm pruning would drop 0.1 (index 2);
    # FPGM drops 2.0 (index 1), the filter nearest the geometric median.
    conv = nn.Conv2d(1, 3, 3, bias=False)
    with torch.no_grad():
        conv.weight[0], conv.weight[1], conv.weight[2] = 3.0, 2.0, 0.1
    for metric, dist in (("l1", 1), ("l2", 2)):
        keep = fpgm_mask(conv.weight, 1 / 3, metric, device="cpu")
        assert keep.tolist() == [True, False, True]
        assert torch.equal(keep, seed_mask(conv.weight, 1 / 3, dist))
    norms = conv.weight.detach().reshape(3, -1).norm(dim=1)
    assert int(norms.argmin()) == 2


def test_custom_metric_mask_equals_seed():
    def manhattan_squared(x):
        return torch.cdist(x, x, p=1) ** 2

    weight = torch.randn(11, 4, 2, 2, generator=torch.Generator().manual_seed(12))
    assert torch.equal(fpgm_mask(weight, 0.45, manhattan_squared, device="cpu"), seed_mask(weight, 0.45, manhattan_squared))


@pytest.mark.parametrize("sparsity,kept", [(-0.0, 6), (0.0, 6), (1.0, 0)])
def test_edge_sparsities_keep_all_or_none(sparsity, kept):
    assert int(fpgm_mask(torch.randn(6, 2), sparsity, device="cpu").sum()) == kept


@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.01, "half", None])
def test_bad_sparsity_is_refused(bad):
    with pytest.raises(PlanError, match="sparsity"):
        fpgm_mask(torch.randn(6, 2), bad, device="cpu")


def test_ties_break_to_lower_index_deterministically():
    weight = torch.ones(6, 4)
    weight[5] = 5.0
    first = fpgm_mask(weight, 0.5, device="cpu")
    assert first.tolist() == [False, False, False, True, True, True]
    assert all(torch.equal(first, fpgm_mask(weight, 0.5, device="cpu")) for _ in range(3))
