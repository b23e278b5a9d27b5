"""fpgm_core.groups and fpgm_core.slim: dependency groups, group-consistent masks, slimmed models, exports.

The central promise: the slimmed model computes exactly what the group-consistently masked model
computes, and has exactly the parameters and FLOPs the groups predict — checked here on the demo
model, on torchvision models at small inputs, and on tiny models built to hit each hard case
(concatenation, LayerNorm, grouped convs, a channel shuffle).
"""

import copy
import json
import zipfile

import pytest
import torch
import torchvision
from torch import nn

from fpgm_core import SparsityPlan, apply_masks, build_model, export_masked, fpgm_scores, layer_filters, plan_masks, read_state_dict
from fpgm_core.counting import count_flops, count_parameters
from fpgm_core.errors import ExportError, FpgmError
from fpgm_core.groups import FPGMGroupImportance, analyse_groups, dependency_groups, group_masks, select_group_channels
from fpgm_core.slim import PT_PICKLE_NOTE, SlimError, export_slimmed, measure_latency, serialize_model, slim_model

DEMO_SHAPE = (1, 1, 8, 8)
SMALL = (1, 3, 32, 32)


def _demo():
    return build_model("demo", "default").model


def _randomise_norms(model, seed=0):
    """Give every BatchNorm non-trivial statistics, so a channel that is not zeroed shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.eval()


def _outputs(model, shape, seed=3):
    x = torch.randn((2, *shape[1:]), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def _assert_close(a, b):
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= 1e-4 * scale, (float((a - b).abs().max()), scale)


# --- groups -------------------------------------------------------------------------------------


def test_demo_groups_couple_each_residual_block_with_the_layer_before_it():
    groups = {g.root: g for g in dependency_groups(_demo(), DEMO_SHAPE)}
    coupled = sorted(tuple(sorted(g.layers)) for g in groups.values() if g.coupled)
    assert coupled == [("conv1", "layer1.conv2"), ("down", "layer2.conv2")]
    assert all(g.blocked_by is None for g in groups.values())
    assert "fc" not in {name for g in groups.values() for name in g.layers}  # the classifier is never cut
    down = next(g for g in groups.values() if "down" in g.layers)
    assert set(down.consumers) == {"layer2.conv1", "fc"} and down.channels == 32


def test_group_importance_is_the_mean_of_each_layers_fpgm_scores_over_its_mean():
    model = _demo()
    analysis = analyse_groups(model, DEMO_SHAPE)
    index = next(g.index for g in analysis.groups if set(g.layers) == {"down", "layer2.conv2"})
    modules = dict(model.named_modules())
    scores = {name: fpgm_scores(layer_filters(modules[name]), "l2", device="cpu") for name in ("down", "layer2.conv2")}
    got = FPGMGroupImportance(scores, analysis.names)(analysis.tp_groups[index])
    expected = (scores["down"] / scores["down"].mean() + scores["layer2.conv2"] / scores["layer2.conv2"].mean()) / 2
    torch.testing.assert_close(got, expected)


def test_uniform_plan_prunes_the_plans_count_and_the_same_channels_in_coupled_layers():
    model = _demo()
    masks = group_masks(model, SparsityPlan(sparsity=0.25), input_shape=DEMO_SHAPE)
    assert set(masks) == {"conv1", "layer1.conv1", "layer1.conv2", "down", "layer2.conv1", "layer2.conv2"}
    assert torch.equal(masks["conv1"], masks["layer1.conv2"])
    assert torch.equal(masks["down"], masks["layer2.conv2"])
    assert all(int((~keep).sum()) == round(0.25 * keep.numel()) for keep in masks.values())
    # An uncoupled layer's group is itself: its channels are the plan's own FPGM choice.
    assert torch.equal(masks["layer1.conv1"], plan_masks(model, SparsityPlan(sparsity=0.25))["layer1.conv1"])


def test_group_masks_replay_from_their_own_per_layer_counts():
    """A recipe of group-consistent counts (equal within each group) reproduces the same masks."""
    model = _demo()
    masks = group_masks(model, SparsityPlan(sparsity=0.4, mode="global"), input_shape=DEMO_SHAPE)
    counts = {name: int((~keep).sum()) for name, keep in masks.items()}
    replayed = group_masks(model, SparsityPlan(counts=counts), input_shape=DEMO_SHAPE)
    assert replayed.keys() == masks.keys() and all(torch.equal(replayed[k], masks[k]) for k in masks)


def test_a_coupled_group_prunes_the_mean_of_its_layers_planned_fractions():
    plan = SparsityPlan(sparsity=0.25, overrides={"down": 0.75})
    selection = select_group_channels(_demo(), plan, input_shape=DEMO_SHAPE)
    row = next(r for r in selection.group_rows() if "down" in r["layers"])
    assert row["planned_fraction"] == pytest.approx(0.5) and row["pruned"] == 16


class Dense(nn.Module):
    """A DenseNet-style block: a concatenation read by a pre-activation BatchNorm."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(8)
        self.grow = nn.Conv2d(8, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(12)
        self.head = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = torch.cat([x, self.grow(x)], dim=1)
        x = self.head(torch.relu(self.norm(x)))
        return self.fc(x.mean(dim=(2, 3)))


class Normed(nn.Module):
    """Channels normalised together by a GroupNorm, then a widening conv that nothing couples."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(1, 8)
        self.wide = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.wide(self.norm(self.conv(x)))).mean(dim=(2, 3)))


def test_batchnorm_after_a_concatenation_blocks_the_groups_that_feed_it():
    groups = {g.root: g for g in dependency_groups(_randomise_norms(Dense()), SMALL)}
    assert groups["grow"].blocked_by == "norm" and "concatenation" in groups["grow"].reason
    assert groups["stem"].blocked_by == "norm"
    assert groups["head"].blocked_by is None


def test_a_norm_over_channels_blocks_its_group_and_the_rest_still_slims():
    model = Normed().eval()
    groups = {g.root: g for g in dependency_groups(model, SMALL)}
    assert groups["conv"].blocked_by == "norm" and "normalises over the channels" in groups["conv"].reason
    result = slim_model(model, SparsityPlan(sparsity=0.5), input_shape=SMALL)
    assert result.model.conv.out_channels == 8 and result.model.wide.out_channels == 8
    assert [row["blocked_by"] for row in result.blocked] == ["norm"]
    assert result.verification.passed


def test_a_model_whose_every_pruned_group_is_blocked_names_the_blocking_layer():
    class OnlyNormed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.norm = nn.GroupNorm(2, 8)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.norm(self.conv(x)).mean(dim=(2, 3)))

    with pytest.raises(SlimError, match=r"blocked, e\.g\. at layer norm .*masked export still works"):
        slim_model(OnlyNormed().eval(), SparsityPlan(sparsity=0.5), input_shape=SMALL)


def test_an_untraceable_channel_shuffle_names_the_layer_and_masks_still_work():
    model = torchvision.models.shufflenet_v2_x0_5().eval()
    with pytest.raises(SlimError, match=r"blocked at .* after layer stage\d\.\d\.branch") as caught:
        slim_model(model, SparsityPlan(sparsity=0.3), input_shape=SMALL)
    assert isinstance(caught.value, FpgmError) and "masked export still works" in str(caught.value)
    masked = apply_masks(model, plan_masks(model, SparsityPlan(sparsity=0.3)))
    assert _outputs(masked, SMALL).shape == (2, 1000)


# --- slimming -----------------------------------------------------------------------------------


def test_slimmed_demo_equals_the_group_masked_demo_and_the_predicted_counts():
    model = _demo()
    before = copy.deepcopy(model.state_dict())
    result = slim_model(model, SparsityPlan(sparsity=0.5), input_shape=DEMO_SHAPE)
    _assert_close(_outputs(result.model, DEMO_SHAPE), _outputs(apply_masks(model, result.masks), DEMO_SHAPE))
    check = result.verification
    assert check.passed and check.max_abs_diff <= check.tolerance
    assert (check.params_predicted, check.flops_predicted) == (result.params_after, result.flops_after)
    assert result.params_after == count_parameters(result.model) < result.params_before == count_parameters(model)
    assert result.flops_after == count_flops(result.model, DEMO_SHAPE)
    assert result.model.down.out_channels == 16 and result.model.layer2.conv1.in_channels == 16
    assert result.state_dict_bytes_after < result.state_dict_bytes_before
    # The caller's model is untouched.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.down.out_channels == 32


def test_per_layer_masks_on_coupled_layers_are_not_what_slimming_computes():
    """Why groups: coupled layers masked independently keep different channels of the same sum."""
    model = _demo()
    result = slim_model(model, SparsityPlan(sparsity=0.5), input_shape=DEMO_SHAPE)
    plain = plan_masks(model, SparsityPlan(sparsity=0.5))
    assert not torch.equal(plain["down"], plain["layer2.conv2"])
    diff = (_outputs(apply_masks(model, plain), DEMO_SHAPE) - _outputs(result.model, DEMO_SHAPE)).abs().max()
    assert diff > 1e-3


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_slim_to_the_group_masked_function(arch):
    model = _randomise_norms(torchvision.models.get_model(arch, weights=None))
    result = slim_model(model, SparsityPlan(sparsity=0.3), input_shape=SMALL)
    _assert_close(_outputs(result.model, SMALL), _outputs(apply_masks(model, result.masks), SMALL))
    assert result.verification.passed and not result.blocked
    assert result.params_after < 0.7 * result.params_before
    assert result.flops_after == result.verification.flops_predicted


def test_resnet_residual_stage_loses_the_same_channels_everywhere():
    model = torchvision.models.resnet18(weights=None).eval()
    masks = group_masks(model, SparsityPlan(sparsity=0.3), input_shape=SMALL)
    stage = ["layer2.0.downsample.0", "layer2.0.conv2", "layer2.1.conv2"]
    assert all(torch.equal(masks[stage[0]], masks[name]) for name in stage)
    assert int((~masks[stage[0]]).sum()) == round(0.3 * 128)


class Grouped(nn.Module):
    """A grouped conv: channels must go in equal numbers from each of its 4 groups."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.a_bn = nn.BatchNorm2d(16)
        self.b = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.b_bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = torch.relu(self.a_bn(self.a(x)))
        x = torch.relu(self.b_bn(self.b(x)))
        return self.fc(x.mean(dim=(2, 3)))


def test_grouped_convs_lose_the_same_positions_in_every_channel_group():
    model = _randomise_norms(Grouped())
    result = slim_model(model, SparsityPlan(sparsity=0.3), input_shape=SMALL)
    pruned = (~result.masks["a"]).nonzero().flatten().tolist()
    assert len(pruned) == 4 and len({p % 4 for p in pruned}) == 1  # one per group, same position
    assert result.model.b.groups == 4 and result.model.b.in_channels == 12
    assert result.verification.passed


def test_global_and_recipe_plans_slim_too():
    model = _demo()
    global_result = slim_model(model, SparsityPlan(sparsity=0.4, mode="global"), input_shape=DEMO_SHAPE)
    assert global_result.verification.passed and global_result.params_after < global_result.params_before
    counts = {"conv1": 4, "layer1.conv1": 4, "layer1.conv2": 4, "down": 8, "layer2.conv1": 8, "layer2.conv2": 8}
    recipe_result = slim_model(model, SparsityPlan(counts=counts), input_shape=DEMO_SHAPE)
    assert recipe_result.model.down.out_channels == 24 and recipe_result.verification.passed


def test_zero_sparsity_changes_nothing():
    result = slim_model(_demo(), SparsityPlan(sparsity=0.0), input_shape=DEMO_SHAPE)
    assert result.params_after == result.params_before and result.masks == {}


def test_latency_is_measured_for_each_model_and_batch_and_modes_restored():
    model = _demo().train()
    result = measure_latency({"a": model, "b": _demo()}, DEMO_SHAPE, batch_sizes=(1, 4), repeats=2, warmup=1, threads=1)
    assert set(result) == {"a", "b"} and all(set(v) == {1, 4} and min(v.values()) > 0 for v in result.values())
    assert model.training
    slimmed = slim_model(_demo(), SparsityPlan(sparsity=0.5), input_shape=DEMO_SHAPE, latency_repeats=2, batch_sizes=(1, 4), threads=1)
    summary = slimmed.to_dict()
    assert set(summary["latency_ms_before"]) == {"1", "4"} and summary["latency_threads"] == 1
    json.dumps(summary)


def test_latency_with_another_thread_count_never_changes_this_processs(monkeypatch):
    # torch's thread count is process-wide: set from a dashboard request, it changed every
    # session's. Another count is measured in a subprocess; this process's setting is not touched.
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    other = torch.get_num_threads() + 1
    result = measure_latency({"a": _demo(), "b": _demo()}, DEMO_SHAPE, batch_sizes=(1, 2), repeats=2, warmup=0, threads=other)
    assert calls == [] and set(result) == {"a", "b"} and all(min(v.values()) > 0 for v in result.values())
    slimmed = slim_model(_demo(), SparsityPlan(sparsity=0.5), input_shape=DEMO_SHAPE, latency_repeats=1, batch_sizes=(1,), threads=other)
    assert calls == [] and slimmed.threads == other and slimmed.latency_ms["after"][1] > 0


def test_a_slim_holds_up_no_other_sessions_traces_or_counts(monkeypatch):
    # MODEL_LOCK was held for the whole slim, latency runs included: another session's first look
    # at a model (its fx trace and FLOP count) waited for all of it. The slim is held inside its
    # latency runs (lock held as the real runs hold it) until the other session's work is done, so
    # the test does not depend on how fast this machine slims: on the old code the other session
    # waits for the hold to time out.
    import threading

    import fpgm_core.slim as slim_module
    from fpgm_core.tracing import fx_graph

    in_latency, others_done = threading.Event(), threading.Event()
    timed_out = []
    time_runs = slim_module._time_runs

    def held_time_runs(*args, **kwargs):
        in_latency.set()
        if not others_done.wait(120):
            timed_out.append(True)
        return time_runs(*args, **kwargs)

    monkeypatch.setattr(slim_module, "_time_runs", held_time_runs)
    big = torchvision.models.resnet18().eval()
    worker = threading.Thread(target=slim_model, args=(big, SparsityPlan(sparsity=0.3)),
                              kwargs=dict(input_shape=SMALL, latency_repeats=2, batch_sizes=(2,)))
    worker.start()
    assert in_latency.wait(600), "the slim never reached its latency runs"
    other = _demo()
    assert fx_graph(other) is not None and count_flops(other, DEMO_SHAPE) > 0
    others_done.set()
    worker.join(600)
    assert not timed_out, "the other session's trace and FLOP count waited for the slim's latency runs"


# --- exports ------------------------------------------------------------------------------------


def test_pt2_reloads_without_pickled_weights_and_runs_any_batch(tmp_path):
    result = slim_model(_demo(), SparsityPlan(sparsity=0.5), input_shape=DEMO_SHAPE)
    file = export_slimmed(result.model, tmp_path / "slim.pt2", input_shape=DEMO_SHAPE)
    assert file.path.read_bytes() == file.data and file.dynamic_batch and file.max_abs_diff <= file.tolerance
    with zipfile.ZipFile(tmp_path / "slim.pt2") as archive:
        config_name = next(n for n in archive.namelist() if n.endswith("weights_config.json"))
        config = json.loads(archive.read(config_name))["config"]
    assert config and not any(entry["use_pickle"] for entry in config.values())
    program = torch.export.load(tmp_path / "slim.pt2").module()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        _assert_close(program(x), result.model(x))


def test_onnx_runs_in_onnxruntime_with_the_same_outputs(tmp_path):
    import onnxruntime

    model = _randomise_norms(torchvision.models.resnet18(weights=None))
    result = slim_model(model, SparsityPlan(sparsity=0.3), input_shape=SMALL)
    file = export_slimmed(result.model, tmp_path / "slim.onnx", input_shape=SMALL)
    session = onnxruntime.InferenceSession(str(tmp_path / "slim.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        _assert_close(got, apply_masks(model, result.masks)(x))
    assert file.size < serialize_model(model, ".onnx", input_shape=SMALL, check=False).size * 0.75


def test_pickled_module_carries_the_weights_only_note(tmp_path):
    result = slim_model(_demo(), SparsityPlan(sparsity=0.5), input_shape=DEMO_SHAPE)
    file = export_slimmed(result.model, tmp_path / "slim.pt", input_shape=DEMO_SHAPE)
    assert file.note == PT_PICKLE_NOTE and "weights_only=False" in file.note
    with pytest.raises(Exception):
        torch.load(tmp_path / "slim.pt", weights_only=True)
    loaded = torch.load(tmp_path / "slim.pt", weights_only=False)
    _assert_close(_outputs(loaded, DEMO_SHAPE), _outputs(result.model, DEMO_SHAPE))


def test_bad_export_name_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(ExportError, match=r"must end in \.pt2, \.onnx or \.pt"):
        export_slimmed(_demo(), tmp_path / "slim.safetensors", input_shape=DEMO_SHAPE)
    assert list(tmp_path.iterdir()) == []


def test_group_consistent_masked_export_computes_what_the_slimmed_model_computes(tmp_path):
    model = _demo()
    result = slim_model(model, SparsityPlan(sparsity=0.5), input_shape=DEMO_SHAPE)
    files = export_masked(model, result.masks, {"format": "test"}, tmp_path / "masked.safetensors")
    reloaded = build_model("demo", "none").model
    reloaded.load_state_dict(read_state_dict(files.checkpoint), strict=True)
    _assert_close(_outputs(reloaded, DEMO_SHAPE), _outputs(result.model, DEMO_SHAPE))


def test_frozen_model_still_finds_its_groups():
    # The dashboard caches models with requires_grad off; Torch-Pruning traces through autograd.
    from fpgm_core import build_model
    from fpgm_core.groups import dependency_groups

    model = build_model("demo", "default").model
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    groups = dependency_groups(model, (1, 1, 8, 8))
    assert len(groups) >= 3
    assert all(not p.requires_grad for p in model.parameters()), "the caller's model was changed"
