"""fpgm_core.training.loop: fine-tuning the demo back to accuracy with its pruned filters exactly zero.

The demo trains in under a second an epoch here, so these are real fine-tunes, kept short.
Zeros are checked after every optimizer step with forward hooks on each pruned layer and the
BatchNorm it feeds (``after_step``), not by reading weights only.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fpgm_core
from fpgm_core.criteria import criterion_masks
from fpgm_core.evaluation import DataError
from fpgm_core.training import (
    FineTuneError,
    FineTuneSettings,
    FineTuneStopped,
    TrainingData,
    demo_training_data,
    fine_tune,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo():
    return fpgm_core.build_model("demo", "default").model


@pytest.fixture(scope="module")
def digits():
    return demo_training_data()


class ZeroChannels:
    """Runs the student on a fixed batch after each step; records any pruned channel that comes out non-zero."""

    def __init__(self, sample: torch.Tensor) -> None:
        self.sample = sample
        self.leaks: list[str] = []
        self.steps = 0
        self.masks_seen: list[dict[str, torch.Tensor]] = []

    def __call__(self, student: nn.Module, masks) -> None:
        self.steps += 1
        self.masks_seen.append({name: keep.clone() for name, keep in masks.items()})
        modules = dict(student.named_modules())
        batchnorms = fpgm_core.following_batchnorms(student)
        handles = []

        def hook_for(name, keep):
            def hook(module, inputs, output):
                if bool(output[:, ~keep].ne(0).any()):
                    self.leaks.append(name)
            return hook

        for name, keep in masks.items():
            handles.append(modules[name].register_forward_hook(hook_for(name, keep)))
            if name in batchnorms:
                handles.append(modules[batchnorms[name]].register_forward_hook(hook_for(batchnorms[name], keep)))
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                student(self.sample)
        finally:
            student.train(was_training)
            for handle in handles:
                handle.remove()


def test_fixed_masks_recover_the_demo_at_30_percent_and_stay_exactly_zero(demo, digits):
    before = fpgm_core.model_fingerprint(demo)
    plan = fpgm_core.SparsityPlan(sparsity=0.3)
    checker = ZeroChannels(digits.val_images[:64])
    epochs: list[int] = []
    result = fine_tune(demo, plan, digits, FineTuneSettings(epochs=5, seed=0), device="cpu",
                       after_step=checker, progress=lambda epoch, metrics: epochs.append(epoch))
    assert fpgm_core.model_fingerprint(demo) == before, "the input model was modified"
    assert checker.steps == 5 * math.ceil(digits.n_train / 64) and not checker.leaks
    assert epochs == [0, 1, 2, 3, 4, 5]
    # The masks are the plan's FPGM masks, and the final model holds zeros exactly there.
    expected = fpgm_core.plan_masks(demo, plan)
    assert all(torch.equal(result.masks[name], keep) for name, keep in expected.items())
    modules = dict(result.model.named_modules())
    for name, keep in result.masks.items():
        assert bool(modules[name].weight.detach()[~keep].eq(0).all())
    untrained, final = result.untrained, result.final
    assert untrained.top1 < 0.6 and final.top1 >= 0.98, [record.top1 for record in result.history]
    assert result.baseline.top1 == pytest.approx(445 / 450)
    assert final.agreement > untrained.agreement and final.train_loss < result.history[1].train_loss
    assert result.threads == 1 and result.amp is None and not result.channels_last


def test_half_the_filters_pruned_recovers_to_96_percent(demo, digits):
    result = fine_tune(demo, fpgm_core.SparsityPlan(sparsity=0.5), digits, FineTuneSettings(epochs=5), device="cpu")
    assert result.untrained.top1 < 0.2 and result.final.top1 >= 0.96


def test_the_same_seed_gives_the_same_weights_bit_for_bit(demo, digits):
    settings = FineTuneSettings(epochs=1, seed=3)
    plan = fpgm_core.SparsityPlan(sparsity=0.4)
    first = fine_tune(demo, plan, digits, settings, device="cpu")
    second = fine_tune(demo, plan, digits, settings, device="cpu")
    other = fine_tune(demo, plan, digits, FineTuneSettings(epochs=1, seed=4), device="cpu")
    assert fpgm_core.model_fingerprint(first.model) == fpgm_core.model_fingerprint(second.model)
    assert fpgm_core.model_fingerprint(first.model) != fpgm_core.model_fingerprint(other.model)


def test_per_epoch_reselection_keeps_the_counts_and_changes_masks_only_at_epoch_ends(demo, digits):
    plan = fpgm_core.SparsityPlan(sparsity=0.4)
    counts = fpgm_core.plan_counts(fpgm_core.prunable_layers(demo), plan)
    checker = ZeroChannels(digits.val_images[:32])
    epoch_of_step: list[int] = []
    # Random re-selection draws new masks every epoch; FPGM re-picks the zeroed filters (they sit
    # at the geometric median), which would leave nothing to see.
    settings = FineTuneSettings(epochs=3, schedule="per-epoch", criterion="random", seed=1)
    result = fine_tune(demo, plan, digits, settings, device="cpu", after_step=checker,
                       batch_progress=lambda epoch, step, steps: epoch_of_step.append(epoch))
    assert not checker.leaks
    for masks in checker.masks_seen:
        assert {name: int((~keep).sum()) for name, keep in masks.items()} == counts
    by_epoch: dict[int, list] = {}
    for epoch, masks in zip(epoch_of_step, checker.masks_seen):
        by_epoch.setdefault(epoch, []).append(masks)
    for epoch, seen in by_epoch.items():
        assert all(all(torch.equal(m[name], seen[0][name]) for name in m) for m in seen), f"masks changed within epoch {epoch}"
    firsts = [by_epoch[e][0] for e in (1, 2, 3)]
    assert any(not torch.equal(firsts[0][n], firsts[1][n]) for n in counts)
    assert any(not torch.equal(firsts[1][n], firsts[2][n]) for n in counts)
    # Frozen filters: masks are re-chosen after every epoch but the last, whose masks are the result's.
    assert [record.masks_changed > 0 for record in result.history[1:]] == [True, True, False]
    assert all(torch.equal(result.masks[name], firsts[2][name]) for name in counts)
    assert all(record.pruned == sum(counts.values()) for record in result.history)


def test_a_sparsity_ramp_grows_to_the_plans_counts(demo, digits):
    plan = fpgm_core.SparsityPlan(sparsity=0.3)
    total = sum(fpgm_core.plan_counts(fpgm_core.prunable_layers(demo), plan).values())
    result = fine_tune(demo, plan, digits, FineTuneSettings(epochs=3, schedule="per-epoch", ramp_epochs=3), device="cpu")
    pruned = [record.pruned for record in result.history]
    assert pruned[0] < pruned[1] < pruned[2] == pruned[3] == total


def test_regrowing_filters_train_between_epoch_ends_and_end_at_zero(demo, digits):
    plan = fpgm_core.SparsityPlan(sparsity=0.3)
    masks = fpgm_core.plan_masks(demo, plan)
    regrown: list[bool] = []

    def watch(student, current):
        modules = dict(student.named_modules())
        regrown.append(any(bool(modules[name].weight.detach()[~keep].ne(0).any()) for name, keep in current.items()))

    result = fine_tune(demo, plan, digits, FineTuneSettings(epochs=2, schedule="per-epoch", regrow=True), device="cpu",
                       after_step=watch)
    assert any(regrown), "regrowing filters never moved off zero"
    modules = dict(result.model.named_modules())
    batchnorms = fpgm_core.following_batchnorms(result.model)
    for name, keep in result.masks.items():
        assert bool(modules[name].weight.detach()[~keep].eq(0).all())
        if name in batchnorms:
            assert bool(modules[batchnorms[name]].weight.detach()[~keep].eq(0).all())
    assert {n: int((~k).sum()) for n, k in result.masks.items()} == {n: int((~k).sum()) for n, k in masks.items()}


def test_distillation_alone_trains_on_unlabelled_images(demo, digits):
    unlabelled = TrainingData(digits.train_images, None, digits.val_images, None, (), "unlabelled digits")
    plan = fpgm_core.SparsityPlan(sparsity=0.3)
    with pytest.raises(FineTuneError, match="no labels"):
        fine_tune(demo, plan, unlabelled, FineTuneSettings(epochs=1), device="cpu")
    result = fine_tune(demo, plan, unlabelled, FineTuneSettings(epochs=3, distill_temperature=4.0, distill_weight=1.0),
                       device="cpu")
    assert result.final.top1 is None and result.untrained.top1 is None
    assert result.untrained.agreement < 0.6 and result.final.agreement > 0.95
    assert result.final.kl < result.untrained.kl / 5


def test_other_criteria_choose_their_own_filters(demo, digits):
    plan = fpgm_core.SparsityPlan(sparsity=0.3)
    result = fine_tune(demo, plan, digits, FineTuneSettings(epochs=1, criterion="norm-l1"), device="cpu")
    expected = criterion_masks(demo, plan, "norm-l1")
    assert all(torch.equal(result.initial_masks[name], keep) for name, keep in expected.items())


def test_stopping_midway_raises_with_the_finished_epochs_and_leaves_the_model(demo, digits):
    before = fpgm_core.model_fingerprint(demo)
    steps = []

    def stop() -> bool:
        steps.append(1)
        return len(steps) > 30  # in the second epoch

    with pytest.raises(FineTuneStopped) as stopped:
        fine_tune(demo, fpgm_core.SparsityPlan(sparsity=0.3), digits, FineTuneSettings(epochs=5), device="cpu", should_stop=stop)
    assert [record.epoch for record in stopped.value.history] == [0, 1]
    assert fpgm_core.model_fingerprint(demo) == before


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(epochs=0), "epochs"),
        (dict(lr=float("nan")), "learning rate"),
        (dict(lr=-1.0), "learning rate"),
        (dict(batch_size=0), "batch size"),
        (dict(regrow=True), "per-epoch"),
        (dict(schedule="per-epoch", ramp_epochs=9, epochs=3), "ramp"),
        (dict(distill_temperature=float("inf")), "temperature"),
        (dict(distill_weight=1.5, distill_temperature=2.0), "distillation weight"),
        (dict(criterion="smallest"), "criterion"),
        (dict(optimizer="lamb"), "optimizer"),
    ],
)
def test_bad_settings_are_refused_by_name(settings, message):
    with pytest.raises(FineTuneError, match=message):
        FineTuneSettings(**settings).validated()


def test_labels_out_of_range_for_the_model_are_refused(demo, digits):
    labels = digits.train_labels.clone()
    labels[0] = 12
    data = TrainingData(digits.train_images, labels, digits.val_images, digits.val_labels, (), "bad labels")
    with pytest.raises(DataError, match="class index 12 is out of range: the model has 10 outputs"):
        fine_tune(demo, fpgm_core.SparsityPlan(sparsity=0.3), data, FineTuneSettings(epochs=1), device="cpu")


def test_settings_round_trip_through_a_dict():
    settings = FineTuneSettings(epochs=3, lr=1e-3, schedule="per-epoch", regrow=True, distill_temperature=3.0).validated()
    assert FineTuneSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(FineTuneError, match="unknown fine-tune setting"):
        FineTuneSettings.from_dict({**settings.to_dict(), "momentum": 0.8})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_with_mixed_precision_and_channels_last(demo, digits):
    result = fine_tune(demo, fpgm_core.SparsityPlan(sparsity=0.3), digits, FineTuneSettings(epochs=3), device="cuda")
    assert result.amp in ("bfloat16", "float16") and result.channels_last
    assert result.final.top1 >= 0.97
    modules = dict(result.model.named_modules())
    for name, keep in result.masks.items():
        assert bool(modules[name].weight.detach()[~keep.cuda()].eq(0).all())
