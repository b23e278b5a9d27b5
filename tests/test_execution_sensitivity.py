"""The sensitivity engine through executors: the suggestion's plans evaluated a batch ahead give the
same search, the same plan and the same evaluation count as one plan at a time."""

from __future__ import annotations

import pytest

from fpgm_core import build_model
from fpgm_core.evaluation import demo_data, predict
from fpgm_core.execution import InlineExecutor
from fpgm_core.sensitivity import _search_ahead, layer_sensitivity, suggest_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class WideInline(InlineExecutor):
    """In this process, but claiming ``n`` workers: the suggestion then evaluates ``n`` plans per run."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    @property
    def workers(self) -> int:
        return self.n


@pytest.fixture(scope="module")
def demo():
    model = build_model("demo", "default").model
    data = demo_data()
    reference = predict(model, data.images)
    return model, data, reference, layer_sensitivity(model, data, reference=reference, device="cpu")


def test_the_search_ahead_lists_the_binary_search_probes_breadth_first():
    assert _search_ahead(-1, 8, 1) == [3]
    # From (-1, 8): 3, then 5 (if 3 passes) and 1 (if it fails), then their children.
    assert _search_ahead(-1, 8, 7) == [3, 5, 1, 6, 4, 2, 0]
    assert _search_ahead(2, 3, 4) == []


@pytest.mark.parametrize("budget, max_evaluations", [(0.01, 64), (0.1, 64), (0.3, 64), (0.1, 5), (0.3, 7), (0.3, 1)])
@pytest.mark.parametrize("workers", [2, 5])
def test_a_batch_ahead_suggests_what_one_at_a_time_does(demo, budget, max_evaluations, workers):
    model, data, reference, sensitivity = demo
    calls_one, calls_wide = [], []
    one = suggest_plan(model, data, sensitivity, budget, reference=reference, max_evaluations=max_evaluations,
                       device="cpu", progress=lambda *c: calls_one.append(c))
    wide = WideInline(workers)
    batched = suggest_plan(model, data, sensitivity, budget, reference=reference, max_evaluations=max_evaluations,
                           device="cpu", executor=wide, progress=lambda *c: calls_wide.append(c))
    assert batched == one
    assert calls_wide == calls_one  # the same plans verified, in the same order, counted the same
    assert one.evaluations <= max_evaluations
    sizes = [report.points for report in wide.reports()]
    assert max(sizes) <= workers
    if one.evaluations > 2:
        assert max(sizes) > 1  # the batching was exercised, not skipped
