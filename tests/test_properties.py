"""Property tests (hypothesis): random shapes and sparsities against the reference and invariants."""

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fpgm_core import SparsityPlan, apply_masks, fpgm_mask, fpgm_scores, plan_masks, prune_count
from seed_oracle import differs_only_at_near_ties, seed_mask

shapes = st.tuples(st.integers(1, 40), st.integers(1, 6), st.integers(1, 3), st.integers(1, 3))
sparsities = st.floats(0.0, 1.0, allow_nan=False)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(shape=shapes, sparsity=sparsities, seed=st.integers(0, 2**31 - 1), metric=st.sampled_from([("l1", 1), ("l2", 2)]))
def test_random_weights_match_the_seed_and_count(shape, sparsity, seed, metric):
    name, dist = metric
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    before = weight.clone()
    ours = fpgm_mask(weight, sparsity, name, device="cpu")
    assert int((~ours).sum()) == prune_count(sparsity, shape[0])
    assert differs_only_at_near_ties(ours, seed_mask(weight, sparsity, dist), weight, dist)
    assert torch.equal(weight, before), "scoring mutated the weight"
    assert torch.equal(ours, fpgm_mask(weight, sparsity, name, device="cpu")), "not deterministic"


@FAST
@given(n=st.integers(2, 60), d=st.integers(1, 30), seed=st.integers(0, 2**31 - 1))
def test_scores_are_permutation_equivariant(n, d, seed):
    weight = torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).double()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    for metric in ("l1", "l2", "cosine"):
        torch.testing.assert_close(fpgm_scores(weight[order], metric, device="cpu"), fpgm_scores(weight, metric, device="cpu")[order])


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(1, 12), min_size=1, max_size=4), sparsity=sparsities,
       mode=st.sampled_from(["uniform", "global"]), seed=st.integers(0, 1000))
def test_plans_on_random_models_count_and_never_mutate(widths, sparsity, mode, seed):
    torch.manual_seed(seed)
    layers, in_channels = [], 2
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_channels = width
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, 3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = SparsityPlan(sparsity=sparsity, mode=mode)
    masks = plan_masks(model, plan, device="cpu")
    # Conv layers sit at indices 0, 3, 6, …; the Linear head is never in a default plan.
    convs = {str(3 * i): width for i, width in enumerate(widths)}
    assert masks.keys() == convs.keys()
    if mode == "uniform":
        assert all(int((~masks[k]).sum()) == prune_count(sparsity, w) for k, w in convs.items())
    else:
        # round(s·total) pruned overall unless the layers cannot give that many: none beyond the
        # 90 % cap, none pruned empty; the ranking fills every layer up to its limit before stopping.
        limits = {k: min(math.floor(0.9 * w + 1e-9), w - 1) for k, w in convs.items()}
        pruned = {k: int((~m).sum()) for k, m in masks.items()}
        assert sum(pruned.values()) == min(prune_count(sparsity, sum(widths)), sum(limits.values()))
        assert all(pruned[k] <= limits[k] for k in convs)
    masked = apply_masks(model, masks)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    again = plan_masks(model, plan, device="cpu")
    assert all(torch.equal(masks[k], again[k]) for k in masks)
    out = masked(torch.randn(2, 2, 5, 5))
    assert torch.isfinite(out).all()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@settings(max_examples=20, deadline=None)
@given(
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
    device=st.sampled_from(DEVICES),
    width=st.integers(1, 24),
    sparsity=sparsities,
    overrides=st.dictionaries(st.sampled_from(["0", "3"]), sparsities, max_size=2),
    mode=st.sampled_from(["uniform", "global"]),
    suffix=st.sampled_from([".pt", ".safetensors"]),
)
def test_dtypes_devices_and_plans_export_and_reload_strictly(tmp_path_factory, dtype, device, width, sparsity, overrides, mode, suffix):
    from safetensors.torch import load_file

    from fpgm_core import export_masked, make_recipe, plan_counts, plan_from_recipe, prunable_layers

    torch.manual_seed(width)
    model = nn.Sequential(
        nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 5, 1), nn.Flatten(), nn.LazyLinear(2)
    )
    model(torch.zeros(1, 3, 4, 4))
    model = model.to(dtype).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = SparsityPlan(sparsity=sparsity, overrides=overrides, mode=mode)
    masks = plan_masks(model, plan, device=device)
    layers = prunable_layers(model)
    counts = {name: int((~keep).sum()) for name, keep in masks.items()}
    if mode == "uniform":
        assert counts == plan_counts(layers, plan)
    recipe = make_recipe(model, plan, counts, layers, arch="tiny", weights="none")
    out = tmp_path_factory.mktemp("export") / f"m{suffix}"
    files = export_masked(model, masks, recipe, out)
    state = load_file(files.checkpoint) if suffix == ".safetensors" else torch.load(files.checkpoint, weights_only=True)
    fresh = nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 5, 1), nn.Flatten(), nn.Linear(20, 2)).to(dtype)
    fresh.load_state_dict(state, strict=True)
    for name, keep in masks.items():
        assert state[f"{name}.weight"].dtype == dtype
        assert torch.all(state[f"{name}.weight"][~keep] == 0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "input model mutated"
    replayed = plan_masks(model, plan_from_recipe(recipe), device=device)
    assert all(torch.equal(replayed[k], masks[k]) for k in masks), "same recipe, different masks"
