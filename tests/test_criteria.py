"""fpgm_core.criteria: norm and random pruning prune as many filters as the plan, chosen their own way."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fpgm_core import PlanError, SparsityPlan, build_model, layer_filters, layer_scores, plan_counts, plan_masks, prunable_layers
from fpgm_core.criteria import (
    CRITERIA,
    check_criterion,
    criterion_masks,
    criterion_metric,
    criterion_scores,
    filter_norms,
    geometric_median,
)


@pytest.fixture(scope="module")
def demo():
    return build_model("demo", "default").model


def pruned_counts(masks):
    return {name: int((~keep).sum()) for name, keep in masks.items()}


PLANS = [
    SparsityPlan(sparsity=0.3),
    SparsityPlan(sparsity=0.6, overrides={"conv1": 0.1, "fc": 0.2}),
    SparsityPlan(sparsity=0.5, mode="global", max_layer_sparsity=0.7),
    SparsityPlan(sparsity=0.4, metric="l1", mode="global"),
]


@pytest.mark.parametrize("plan", PLANS, ids=["uniform", "overrides", "global-l2", "global-l1"])
@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_prunes_the_plans_counts(demo, plan, criterion):
    expected = pruned_counts(plan_masks(demo, plan))
    assert pruned_counts(criterion_masks(demo, plan, criterion, seed=3)) == expected


def test_fpgm_criterion_of_the_plans_metric_is_the_plans_masks(demo):
    for plan in PLANS:
        masks = criterion_masks(demo, plan, f"fpgm-{plan.metric}")
        reference = plan_masks(demo, plan)
        assert masks.keys() == reference.keys()
        assert all(torch.equal(masks[name], reference[name]) for name in masks)


def test_norm_criteria_prune_the_smallest_norms(demo):
    modules = dict(demo.named_modules())
    plan = SparsityPlan(sparsity=0.4)
    for criterion, p in (("norm-l1", 1), ("norm-l2", 2)):
        masks = criterion_masks(demo, plan, criterion)
        for name, keep in masks.items():
            norms = layer_filters(modules[name]).detach().reshape(keep.shape[0], -1).norm(p=p, dim=1)
            assert float(norms[~keep].max()) <= float(norms[keep].min())


def test_three_filter_example_norm_drops_the_smallest_fpgm_the_median():
    conv = nn.Conv2d(1, 3, 3, bias=False)
    with torch.no_grad():
        for index, value in enumerate((3.0, 2.0, 0.1)):
            conv.weight[index].fill_(value)
    model = nn.Sequential(conv, nn.Conv2d(3, 2, 1))
    plan = SparsityPlan(overrides={"0": 1 / 3})
    assert criterion_masks(model, plan, "norm-l2")["0"].tolist() == [True, True, False]
    assert criterion_masks(model, plan, "norm-l1")["0"].tolist() == [True, True, False]
    assert criterion_masks(model, plan, "fpgm-l2")["0"].tolist() == [True, False, True]
    assert criterion_masks(model, plan, "fpgm-l1")["0"].tolist() == [True, False, True]


def test_norms_follow_output_channels_of_grouped_transposed_convolutions():
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(4, 6, 3, groups=2)
    model = nn.Sequential(deconv, nn.Conv2d(6, 2, 1))
    with torch.no_grad():
        # Make output channel 4 (group 1, second channel) by far the smallest.
        deconv.weight[2:4, 1] *= 1e-3
    scores = criterion_scores(model, "norm-l2")["0"]
    assert scores.shape == (6,) and int(torch.argmin(scores)) == 4
    assert torch.allclose(scores, filter_norms(layer_filters(deconv), 2))


def test_random_is_seeded_and_independent_of_the_layers_asked_for(demo):
    plan = SparsityPlan(sparsity=0.5)
    first = criterion_masks(demo, plan, "random", seed=7)
    again = criterion_masks(demo, plan, "random", seed=7)
    other = criterion_masks(demo, plan, "random", seed=8)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert any(not torch.equal(first[name], other[name]) for name in first)
    alone = criterion_scores(demo, "random", names=["down"], seed=7)["down"]
    assert torch.equal(alone, criterion_scores(demo, "random", seed=7)["down"])


def test_scores_are_reused_and_counts_can_be_given(demo):
    scores = criterion_scores(demo, "norm-l1")
    counts = plan_counts(prunable_layers(demo), SparsityPlan(sparsity=0.25))
    masks = criterion_masks(demo, SparsityPlan(sparsity=0.9), "norm-l1", scores=scores, counts=counts)
    assert pruned_counts(masks) == counts
    assert torch.equal(criterion_scores(demo, "fpgm-l1")["down"], layer_scores(demo, "l1", device="cpu")["down"])


def test_bad_names_are_plan_errors(demo):
    assert check_criterion("FPGM-L2") == "fpgm-l2"
    assert criterion_metric("fpgm-l1") == "l1" and criterion_metric("norm-l2") is None
    with pytest.raises(PlanError, match="unknown criterion 'taylor'"):
        check_criterion("taylor")
    with pytest.raises(PlanError, match="nope"):
        criterion_scores(demo, "norm-l2", names=["nope"])
    with pytest.raises(PlanError, match="nope"):
        criterion_masks(demo, SparsityPlan(), "random", counts={"nope": 1})


def summed_distance(point: torch.Tensor, points: torch.Tensor) -> float:
    return float((points - point).norm(dim=1).sum())


def test_geometric_median_of_collinear_filters_is_the_middle_one():
    filters = torch.stack([torch.full((9,), v) for v in (3.0, 2.0, 0.1)])
    assert torch.allclose(geometric_median(filters), torch.full((9,), 2.0, dtype=torch.float64))
    square = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    assert torch.allclose(geometric_median(square), torch.tensor([1.0, 1.0], dtype=torch.float64), atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 12), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_geometric_median_beats_every_data_point_and_the_mean(n, d, seed):
    points = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    median = geometric_median(points)
    best = summed_distance(median, points)
    for candidate in [*points, points.mean(dim=0)]:
        # Weiszfeld's iteration converges to the optimum, not onto it: allow a part in a million.
        assert best <= summed_distance(candidate, points) * (1 + 1e-6) + 1e-12
