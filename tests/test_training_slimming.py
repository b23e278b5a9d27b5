"""fpgm_core.training.slimming: a fine-tuned model slims to exactly the channels its masks hold at zero."""

from __future__ import annotations

import pytest
import torch
import torchvision

import fpgm_core
from fpgm_core.criteria import criterion_scores
from fpgm_core.groups import group_masks
from fpgm_core.slim import SlimError
from fpgm_core.training import FineTuneSettings, demo_training_data, fine_tune, masks_plan, read_masks, slim_masked

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_the_fine_tuned_group_masked_demo_slims_with_equal_outputs():
    demo = fpgm_core.build_model("demo", "default").model
    data = demo_training_data()
    result = fine_tune(demo, fpgm_core.SparsityPlan(sparsity=0.4), data,
                       FineTuneSettings(epochs=2, group_consistent=True), device="cpu")
    # Group-consistent: the two layers of each residual stream lose the same channels.
    assert torch.equal(result.masks["conv1"], result.masks["layer1.conv2"])
    assert torch.equal(result.masks["down"], result.masks["layer2.conv2"])
    slimmed = slim_masked(result.model, result.masks, input_shape=(1, 1, 8, 8))
    for name, keep in result.masks.items():
        assert torch.equal(slimmed.masks.get(name, torch.ones_like(keep)), keep), name
    with torch.no_grad():
        ours, theirs = slimmed.model(data.val_images), result.model.eval()(data.val_images)
    assert _relative_gap(ours, theirs) < 1e-5
    assert bool((ours.argmax(1) == theirs.argmax(1)).all())
    assert slimmed.params_after < slimmed.params_before and slimmed.verification.passed


def test_masks_that_differ_across_a_residual_add_cannot_be_slimmed_as_they_are():
    demo = fpgm_core.build_model("demo", "default").model
    masks = fpgm_core.plan_masks(demo, fpgm_core.SparsityPlan(sparsity=0.4))
    assert not torch.equal(masks["conv1"], masks["layer1.conv2"])
    with pytest.raises(SlimError, match="group-consistent"):
        slim_masked(fpgm_core.apply_masks(demo, masks), masks, input_shape=(1, 1, 8, 8))


def test_a_resnet_retrained_under_group_masks_slims_to_those_channels():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.bias.uniform_(-0.5, 0.5)
    shape = (1, 3, 64, 64)
    # Randomly chosen group-consistent channels: nothing FPGM would pick on these weights.
    random_scores = criterion_scores(model, "random", seed=3)
    masks = group_masks(model, fpgm_core.SparsityPlan(sparsity=0.3), input_shape=shape, scores=random_scores)
    trained = fpgm_core.apply_masks(model, masks)
    # Stand-in for training: every kept weight moves, away from the origin, where the zeroed filters
    # sit; FPGM on these weights would now keep the zeroed filters (they are far from the others).
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in trained.modules():
            if isinstance(module, torch.nn.Conv2d):
                weight = module.weight
                direction = torch.randn(weight.shape[1:], generator=generator)
                scale = 3 * weight.flatten(1).norm(dim=1).mean() / direction.norm()
                weight.add_(scale * direction + 0.1 * weight.std() * torch.randn(weight.shape, generator=generator))
    trained = fpgm_core.apply_masks(trained, masks)
    slimmed = slim_masked(trained, masks, input_shape=shape)
    assert all(torch.equal(slimmed.masks[name], keep) for name, keep in masks.items())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _relative_gap(slimmed.model(x), trained(x)) < 1e-4


def test_masks_plan_prunes_the_masked_counts_with_masked_channels_lowest():
    demo = fpgm_core.build_model("demo", "default").model
    masks = fpgm_core.plan_masks(demo, fpgm_core.SparsityPlan(sparsity=0.3))
    plan, scores = masks_plan(demo, masks)
    assert dict(plan.counts) == {name: int((~keep).sum()) for name, keep in masks.items()}
    for name, keep in masks.items():
        assert bool((scores[name][~keep] == 0).all()) and bool((scores[name][keep] > 0).all())
    assert bool((scores["fc"] > 0).all())


def test_masks_files_are_read_without_pickle_and_checked(tmp_path):
    from safetensors.torch import save_file

    keep = torch.tensor([True, False, True])
    save_file({"conv1": keep}, str(tmp_path / "m.masks.safetensors"))
    assert torch.equal(read_masks(tmp_path / "m.masks.safetensors")["conv1"], keep)
    save_file({"conv1": torch.rand(3, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(fpgm_core.ModelLoadError, match="not a keep-mask"):
        read_masks(tmp_path / "bad.safetensors")
