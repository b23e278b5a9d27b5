"""fpgm_core.plan: uniform and global plans, overrides, the output layer, cached scores."""

import pytest
import torch
import torchvision

import fpgm_core.plan as plan_module
from fpgm_core import PlanError, SparsityPlan, layer_scores, plan_counts, plan_masks, prunable_layers, prune_count


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    return model, layer_scores(model, "l2", device="cpu")


def test_uniform_plan_prunes_each_layer_by_its_own_count(resnet):
    model, scores = resnet
    masks = plan_masks(model, SparsityPlan(sparsity=0.3), scores=scores)
    layers = {l.name: l for l in prunable_layers(model)}
    assert "fc" not in masks
    for name, keep in masks.items():
        assert int((~keep).sum()) == prune_count(0.3, layers[name].filters)


def test_overrides_and_explicit_output_layer(resnet):
    model, scores = resnet
    plan = SparsityPlan(sparsity=0.2, overrides={"conv1": 0.5, "fc": 0.1})
    masks = plan_masks(model, plan, scores=scores)
    assert int((~masks["conv1"]).sum()) == 32
    assert int((~masks["fc"]).sum()) == 100
    assert int((~masks["layer1.0.conv1"]).sum()) == prune_count(0.2, 64)
    assert "fc" in plan_masks(model, SparsityPlan(sparsity=0.2, include_output=True), scores=scores)


def test_unknown_layer_and_bad_values_are_named(resnet):
    model, scores = resnet
    with pytest.raises(PlanError, match="unknown layer.*nope"):
        plan_masks(model, SparsityPlan(sparsity=0.2, overrides={"nope": 0.5}), scores=scores)
    with pytest.raises(PlanError, match="layer 'conv1'"):
        plan_masks(model, SparsityPlan(overrides={"conv1": 2.0}), scores=scores)
    with pytest.raises(PlanError, match="mode"):
        plan_masks(model, SparsityPlan(mode="sideways"), scores=scores)


def test_cached_scores_mean_no_distance_is_recomputed(resnet, monkeypatch):
    model, scores = resnet

    def refuse(*args, **kwargs):
        raise AssertionError("distances recomputed")

    monkeypatch.setattr(plan_module, "fpgm_scores", refuse)
    for sparsity in (0.1, 0.5, 0.8):
        for mode in ("uniform", "global"):
            plan_masks(model, SparsityPlan(sparsity=sparsity, mode=mode), scores=scores)


def test_global_ranking_hits_the_total_respects_the_cap_and_prunes_lowest_scores(resnet):
    model, scores = resnet
    layers = [l for l in prunable_layers(model) if not l.is_output]
    total = sum(l.filters for l in layers)
    plan = SparsityPlan(sparsity=0.5, mode="global", max_layer_sparsity=0.7)
    masks = plan_masks(model, plan, scores=scores)
    pruned = {name: int((~keep).sum()) for name, keep in masks.items()}
    assert sum(pruned.values()) == prune_count(0.5, total)
    assert len(set(pruned.values())) > 1, "global ranking should prune layers unevenly"
    for layer in layers:
        assert pruned[layer.name] <= int(0.7 * layer.filters)
        keep = masks[layer.name]
        if 0 < pruned[layer.name] < layer.filters:
            assert scores[layer.name][~keep].max() <= scores[layer.name][keep].min()


def test_global_ranking_never_empties_a_layer_unless_asked(resnet):
    model, scores = resnet
    masks = plan_masks(model, SparsityPlan(sparsity=1.0, mode="global", max_layer_sparsity=1.0), scores=scores)
    assert all(int(keep.sum()) == 1 for keep in masks.values())
    emptied = plan_masks(model, SparsityPlan(sparsity=1.0, mode="global", max_layer_sparsity=1.0, allow_empty=True), scores=scores)
    assert all(int(keep.sum()) == 0 for keep in emptied.values())


def test_global_overrides_are_fixed_and_the_rest_compete(resnet):
    model, scores = resnet
    masks = plan_masks(model, SparsityPlan(sparsity=0.3, mode="global", overrides={"conv1": 0.0}), scores=scores)
    assert bool(masks["conv1"].all())


def test_plans_are_deterministic(resnet):
    model, _ = resnet
    plan = SparsityPlan(sparsity=0.35, mode="global", metric="l1")
    first = plan_masks(model, plan, device="cpu")
    second = plan_masks(model, plan, device="cpu")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_counts_plan_replays_exact_numbers(resnet):
    model, scores = resnet
    layers = prunable_layers(model)
    counts = plan_counts(layers, SparsityPlan(sparsity=0.4, mode="global"), scores)
    replay = plan_masks(model, SparsityPlan(counts=counts), scores=scores)
    direct = plan_masks(model, SparsityPlan(sparsity=0.4, mode="global"), scores=scores)
    assert all(torch.equal(replay[k], direct[k]) for k in direct)
    with pytest.raises(PlanError, match="cannot prune 65 of 64"):
        plan_counts(layers, SparsityPlan(counts={"conv1": 65}))


def test_a_default_plan_prunes_neither_of_two_classifier_heads():
    from test_layers import TwoHeads

    model = TwoHeads()
    plan = SparsityPlan(sparsity=0.3)
    counts = plan_counts(prunable_layers(model), plan)
    assert set(counts) == {"stem", "late_registered"}
    masks = plan_masks(model, plan)
    assert set(masks) == {"stem", "late_registered"}
    assert set(plan_masks(model, SparsityPlan(sparsity=0.3, include_output=True))) == {"stem", "late_registered", "head", "head_dist"}
