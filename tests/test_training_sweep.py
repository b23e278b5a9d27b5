"""fpgm_core.training.sweep: criteria × sparsities × seeds, each fine-tuned, through the executor interface.

Same weights wherever a point runs (worker processes with another torch thread count than the
caller; Ray in test_cluster.py), and whatever ran before it in the same process (dropout).
"""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
from torch import nn

import fpgm_core
from fpgm_core.evaluation import EvaluationCancelled
from fpgm_core.execution import INLINE, ProcessExecutor
from fpgm_core.training import (
    FineTuneSettings,
    SweepInputs,
    SweepPoint,
    demo_training_data,
    finetune_point,
    finetuned_summary,
    finetuned_sweep,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo():
    return fpgm_core.build_model("demo", "default").model


@pytest.fixture(scope="module")
def digits():
    return demo_training_data()


def test_every_point_is_pruned_then_fine_tuned_and_summarised(demo, digits):
    progress = []
    points = finetuned_sweep(demo, digits, FineTuneSettings(epochs=1), sparsities=(0.5,), criteria=("fpgm-l2", "random"),
                             seeds=(0, 1), executor=INLINE, progress=lambda done, total, what: progress.append((done, total, what)))
    assert [(p.criterion, p.seed) for p in points] == [("fpgm-l2", 0), ("fpgm-l2", 1), ("random", 0), ("random", 1)]
    assert progress[0] == (0, 4, "starting with fpgm-l2 at 50% seed 0")
    assert progress[-1][:2] == (4, 4) and progress[1][2] == "fpgm-l2 at 50% seed 0"
    for point in points:
        assert point.top1 > point.pruned_top1 + 0.3 and point.flops_removed > 0.6
        assert point.drop == pytest.approx(point.baseline_top1 - point.top1)
    # Random pruning's draw follows the seed; FPGM's masks do not, only the batch order.
    fpgm = [p for p in points if p.criterion == "fpgm-l2"]
    assert fpgm[0].pruned_top1 == fpgm[1].pruned_top1 and fpgm[0].top1 != fpgm[1].top1
    rows = finetuned_summary(points)
    assert [(row["criterion"], row["runs"]) for row in rows] == [("fpgm-l2", 2), ("random", 2)]
    assert rows[0]["top1"] == pytest.approx((fpgm[0].top1 + fpgm[1].top1) / 2)


def test_a_point_computed_from_pickled_inputs_equals_the_in_process_one(demo, digits):
    """What a process or cluster executor does: the task, its shared input and point travel as pickles."""
    shared = SweepInputs(demo, digits, FineTuneSettings(epochs=1).validated(), "cpu")
    point = SweepPoint("norm-l2", 0.3, 0)
    here = finetune_point(shared, point)
    there = pickle.loads(pickle.dumps(finetune_point(pickle.loads(pickle.dumps(shared)), pickle.loads(pickle.dumps(point)))))
    assert here.top1 == there.top1 and here.agreement == there.agreement


def test_a_stop_between_points_cancels_the_sweep(demo, digits):
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 1  # after the first point

    with pytest.raises(EvaluationCancelled):
        finetuned_sweep(demo, digits, FineTuneSettings(epochs=1), sparsities=(0.3, 0.5), criteria=("fpgm-l2",), seeds=(0,),
                        should_stop=stop)


def timeless(points):
    """The points without their wall time (the one field that differs from run to run)."""
    return [dataclasses.replace(point, seconds=0.0) for point in points]


def test_points_on_worker_processes_with_other_thread_counts_give_the_in_process_weights(demo, digits):
    # The workers start on 2 torch threads, this process runs on 1: CPU reductions split by thread
    # count, so without matching the caller's count the weights differ in their last bits.
    kwargs = dict(sparsities=(0.5,), criteria=("fpgm-l2", "random"), seeds=(0,))
    here = finetuned_sweep(demo, digits, FineTuneSettings(epochs=1), **kwargs)
    done = []
    with ProcessExecutor(2, threads=2) as executor:
        there = finetuned_sweep(demo, digits, FineTuneSettings(epochs=1), executor=executor,
                                progress=lambda n, total, what: done.append(n), **kwargs)
        report = executor.reports()[-1]
    assert timeless(there) == timeless(here)  # every field: top-1, agreement, the weights' SHA-256, threads
    assert {point.threads for point in there} == {1} and len({point.weights for point in there}) == 2
    assert done == [0, 1, 2] and report.points == 2 and len(report.placements) == 2


def _dropout_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.3),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


def test_a_point_of_a_model_with_dropout_does_not_depend_on_the_points_before_it(digits):
    model, settings = _dropout_net(), FineTuneSettings(epochs=1)
    both = finetuned_sweep(model, digits, settings, sparsities=(0.25, 0.5), criteria=("norm-l2",), seeds=(0,))
    torch.manual_seed(123)  # whatever state the global generator is in
    alone = finetuned_sweep(model, digits, settings, sparsities=(0.5,), criteria=("norm-l2",), seeds=(0,))
    assert timeless(alone) == timeless(both[1:])


def test_a_stop_in_process_ends_the_running_point_between_steps(demo, digits):
    polls, finished = [], []

    def stop() -> bool:
        polls.append(1)
        return len(polls) > 3  # within the first point's first epoch (it has 22 steps)

    with pytest.raises(EvaluationCancelled):
        finetuned_sweep(demo, digits, FineTuneSettings(epochs=3), sparsities=(0.5,), criteria=("fpgm-l2",), seeds=(0,),
                        progress=lambda n, total, what: finished.append(n), should_stop=stop)
    assert finished == [0] and len(polls) == 4
