"""fpgm_core.training.sweep: criteria × sparsities × seeds, each fine-tuned, through the executor interface."""

from __future__ import annotations

import pickle

import pytest

import fpgm_core
from fpgm_core.evaluation import EvaluationCancelled
from fpgm_core.execution import INLINE
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
