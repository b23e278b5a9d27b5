"""One fine-tune where an executor runs it (a Ray worker, or this process), reporting every epoch as it goes.

:func:`fine_tune_on` is :func:`~fpgm_core.training.fine_tune` through
:meth:`fpgm_core.execution.Executor.stream`: the model, plan, data and settings travel once, the
task (:func:`fine_tune_task`) sends every epoch's metrics and (at most a few times a second) the
step it is at, which reach the caller's ``progress`` and ``batch_progress`` while it trains; a
stop cancels it. The result (the fine-tuned model, its masks and history) comes back whole.

Same weights wherever it runs: a fine-tune elsewhere runs on the caller's torch threads, and
dropout draws from torch's global generator seeded with the settings' seed (and restored after),
as ``python -m fpgm_core finetune`` seeds it.
"""

from __future__ import annotations

import copy
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from ..execution import Executor, point_should_stop
from ..plan import SparsityPlan
from .data import TrainingData
from .loop import FineTuneResult, Progress, fine_tune
from .settings import FineTuneSettings

__all__ = ["FineTuneInputs", "fine_tune_task", "fine_tune_on"]

# Step reports are thinned to one per this many seconds: a page polls once a second.
_STEP_REPORT_S = 0.25


@dataclass(frozen=True)
class FineTuneInputs:
    """What one fine-tune reads, and the torch threads of ``caller`` (host, pid) it runs on elsewhere."""

    model: nn.Module
    plan: SparsityPlan
    data: TrainingData
    settings: FineTuneSettings
    scores: Mapping[str, Tensor] | None
    device: str
    threads: int
    caller: tuple[str, int]


def _here() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


def fine_tune_task(inputs: FineTuneInputs, _point: Any, send: Callable[[Any], None]) -> FineTuneResult:
    """The stream task: fine-tune, sending ``("epoch", epoch, metrics)`` and ``("step", epoch, step, steps)``."""
    if _here() != inputs.caller and torch.get_num_threads() != inputs.threads:
        torch.set_num_threads(inputs.threads)  # a worker process is ours; the caller's count gives its weights
    last_step = [0.0]

    def progress(epoch: int, metrics: dict[str, Any]) -> None:
        send(("epoch", epoch, metrics))

    def steps(epoch: int, step: int, total: int) -> None:
        now = time.monotonic()
        if step == total or now - last_step[0] >= _STEP_REPORT_S:
            last_step[0] = now
            send(("step", epoch, step, total))

    target = torch.device(inputs.device)
    generators = [target.index if target.index is not None else torch.cuda.current_device()] if target.type == "cuda" else []
    with torch.random.fork_rng(devices=generators):
        torch.manual_seed(inputs.settings.seed)
        result = fine_tune(inputs.model, inputs.plan, inputs.data, inputs.settings, scores=inputs.scores,
                           device=inputs.device, progress=progress, batch_progress=steps, should_stop=point_should_stop())
    result.extra["ran_on"] = {"host": _here()[0], "pid": _here()[1]}
    return result


def fine_tune_on(
    executor: Executor,
    model: nn.Module,
    plan: SparsityPlan,
    data: TrainingData,
    settings: FineTuneSettings = FineTuneSettings(),
    *,
    scores: Mapping[str, Tensor] | None = None,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    batch_progress: Callable[[int, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FineTuneResult:
    """:func:`~fpgm_core.training.fine_tune` run by ``executor``, its callbacks called here as it trains.

    ``result.extra["ran_on"]`` says where it ran (host, pid). A stop raises EvaluationCancelled
    (in this process: :class:`~fpgm_core.training.FineTuneStopped`). ``model`` is not modified.
    """
    settings = settings.validated()
    if torch.device(device).type == "cpu" and any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()  # a worker elsewhere may have no GPU; a CPU fine-tune trains on CPU anyway
    inputs = FineTuneInputs(model, plan, data, settings, scores, str(device), torch.get_num_threads(), _here())

    def report(event: tuple) -> None:
        kind, *values = event
        if kind == "epoch" and progress is not None:
            progress(*values)
        elif kind == "step" and batch_progress is not None:
            batch_progress(*values)

    return executor.stream(fine_tune_task, inputs, None, label=lambda _: "the fine-tune", report=report,
                           should_stop=should_stop)


