"""fpgm_core.counting: parameters and FLOPs before, and estimated after, pruning."""

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fpgm_core import SparsityPlan, count_flops, count_parameters, estimate_pruned_costs, input_producers, layer_flops, plan_masks


def test_counts_match_torch_flop_counter_and_parameters():
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 64, 64))
    assert count_flops(model, (1, 3, 64, 64)) == counter.get_total_flops()
    # torchvision documents 11,689,512 parameters for resnet18 (its weights' "num_params").
    assert count_parameters(model) == 11_689_512
    total, per_module = layer_flops(model, (1, 3, 64, 64))
    assert per_module["conv1"] > 0 and per_module["fc"] == 2 * 512 * 1000


def test_shared_parameters_are_counted_once_and_buffers_not_at_all():
    conv = nn.Conv2d(3, 8, 3)  # 8·3·3·3 + 8 = 224
    tied = nn.Sequential(conv, nn.BatchNorm2d(8), conv.__class__(8, 8, 1))  # BN 16 (+ 3 buffers), 1×1 conv 72
    tied.append(tied[0])  # the same conv again: no new parameters
    assert count_parameters(tied) == 224 + 16 + 72


def test_chain_estimate_equals_the_physically_smaller_model():
    big = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    small = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 4, 3)).eval()
    keep = torch.tensor([True, False, True, True, False, True, False, True])
    assert input_producers(big) == {"3": "0"}
    costs = estimate_pruned_costs(big, {"0": keep}, (1, 3, 10, 10))
    assert costs.flops_after == count_flops(small, (1, 3, 10, 10))
    # BN parameters are not counted as removed by the estimate (they stay in a masked model).
    assert costs.params_after == count_parameters(small) + 2 * 3


def test_no_masks_means_no_change_and_more_sparsity_means_fewer_flops():
    model = torchvision.models.resnet18(weights=None).eval()
    flops = layer_flops(model, (1, 3, 64, 64))
    producers = input_producers(model)
    none = estimate_pruned_costs(model, {}, (1, 3, 64, 64), flops=flops, producers=producers)
    assert none.flops_after == none.flops_before and none.params_after == none.params_before
    previous = none.flops_after
    for sparsity in (0.2, 0.5, 0.8):
        masks = plan_masks(model, SparsityPlan(sparsity=sparsity), device="cpu")
        costs = estimate_pruned_costs(model, masks, (1, 3, 64, 64), flops=flops, producers=producers)
        assert costs.flops_after < previous
        previous = costs.flops_after
    assert 0 < costs.flops_removed < 1 and 0 < costs.params_removed < 1


def test_producers_are_found_through_batchnorm_subclasses_outside_torch_nn():
    from test_masking import BatchNormAct

    model = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct(8), nn.Conv2d(8, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    assert input_producers(model) == {"2": "0", "4": "2"}
    keep = torch.ones(8, dtype=torch.bool)
    keep[:4] = False
    costs = estimate_pruned_costs(model, {"0": keep}, (1, 3, 10, 10))
    # Half of conv 2's input channels go with conv 0's filters: its weight and FLOPs halve too.
    assert costs.params_before - costs.params_after == 4 * 27 + 4 + 4 * 4 * 9
