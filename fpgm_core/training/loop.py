"""Fine-tune a pruned model so that it wins back accuracy while its pruned filters stay exactly zero.

:func:`fine_tune` copies the unpruned model twice: the *teacher* (left as it is: the reference for
agreement, and the teacher when distilling) and the *student*, which is masked and trained. The
input model is never modified.

One step: forward (under :data:`fpgm_core.tracing.MODEL_LOCK`, so that another thread's fx trace
cannot patch modules mid-call), the loss (:mod:`.distillation`), backward, the pruned entries'
gradients zeroed (:class:`.keeping.MaskKeeper`), the optimizer step, the pruned entries zeroed.
The learning rate follows the schedule step by step. After every epoch the student is measured on
the held-out images (top-1, agreement with and KL from the teacher), and masks are re-chosen where
the schedule says so (:mod:`.schedules`).

Re-selection (per-epoch schedule): newly pruned filters are zeroed with their optimizer state. A
filter that comes back gets its weights, bias and BatchNorm channel from the unpruned model: a
filter whose weights and BN scale are both zero has no gradient, so it could never regrow.
With ``regrow`` (soft filter pruning) pruned filters train between epoch ends; their BatchNorm
channels are left alone until the last epoch ends (a zero BN scale would stop their gradient), and
each epoch is measured on a masked copy, i.e. as the model would be if training stopped there.

Reproducible: on CPU with a seed, the same call gives the same weights bit for bit, for a given
number of torch threads (recorded in the result; intra-op reductions split by thread count). Batch
order, augmentation and random masks come from the run's own generator; nothing process-wide
(threads, deterministic algorithms, the global RNG) is changed, so sessions that share a process
do not disturb each other. Models with dropout draw it from torch's global generator, which the
caller seeds (the CLI does). On CUDA, automatic mixed precision (bfloat16 where the GPU has it,
else float16 with a gradient scaler) and channels-last memory for convolutional models are used
by default; they are not bit-reproducible and are recorded in the result.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from ..devices import resolve_device
from ..evaluation import EvalResult, EvaluationCancelled, compare_outputs, predict
from ..layers import filter_index
from ..masking import apply_masks, following_batchnorms
from ..plan import SparsityPlan
from ..tracing import MODEL_LOCK
from .data import TrainingData, augment_batch, batches
from .distillation import training_loss
from .keeping import MaskKeeper
from .schedules import MaskSchedule
from .selection import resolve_counts, select_masks
from .settings import FineTuneError, FineTuneSettings

__all__ = ["EpochRecord", "FineTuneResult", "FineTuneStopped", "Progress", "fine_tune"]

# progress(epoch, metrics): after every epoch, epoch 0 being the pruned model before training.
Progress = Callable[[int, dict[str, Any]], None]
# Fraction of the steps the one-cycle schedule spends warming up.
_WARMUP = 0.1


@dataclass(frozen=True)
class EpochRecord:
    """The student after one epoch (epoch 0: pruned, before any training), measured on the held-out images.

    ``top1`` is None for unlabelled held-out images. ``masks_changed``: filters whose mask changed
    at this epoch's end. ``train_seconds`` counts the training steps only (wall clock), ``seconds``
    the epoch; ``train_cpu_seconds`` is the calling thread's CPU time in the steps (all of the work
    with one intra-op thread), which other processes on a busy machine do not inflate.
    """

    epoch: int
    train_loss: float | None
    top1: float | None
    agreement: float
    kl: float
    lr: float
    pruned: int
    masks_changed: int
    images: int
    train_seconds: float
    seconds: float
    train_cpu_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass
class FineTuneResult:
    """A fine-tuned model, its final masks, and how it got there.

    ``model`` is the student in eval mode on the training device; ``masks`` are its final masks
    (True = kept): its pruned filters and their BatchNorm channels are exactly zero.
    """

    model: nn.Module
    masks: dict[str, Tensor]
    initial_masks: dict[str, Tensor]
    counts: dict[str, int]
    history: list[EpochRecord]
    baseline: EvalResult
    settings: FineTuneSettings
    data: dict[str, Any]
    device: str
    amp: str | None
    channels_last: bool
    threads: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> EpochRecord:
        """The last epoch's record."""
        return self.history[-1]

    @property
    def untrained(self) -> EpochRecord:
        """Epoch 0: the pruned model before training."""
        return self.history[0]

    def to_dict(self) -> dict[str, Any]:
        """The run as JSON-ready data (no weights): settings, the per-epoch history, what ran where."""
        return {
            "settings": self.settings.to_dict(),
            "data": dict(self.data),
            "baseline": _json_result(self.baseline),
            "history": [record.to_dict() for record in self.history],
            "pruned": sum(self.counts.values()),
            "device": self.device,
            "amp": self.amp,
            "channels_last": self.channels_last,
            "threads": self.threads,
            "seconds": self.seconds,
        }


class FineTuneStopped(EvaluationCancelled):
    """``should_stop`` asked a fine-tune to stop; ``history`` holds the epochs finished before it."""

    def __init__(self, message: str, history: list[EpochRecord]) -> None:
        super().__init__(message)
        self.history = history


def _json_result(result: EvalResult) -> dict[str, Any]:
    values = result.to_dict()
    if isinstance(values["top1"], float) and math.isnan(values["top1"]):
        values["top1"] = None
    return values


def _output_classes(model: nn.Module, sample: Tensor) -> int:
    with torch.no_grad(), MODEL_LOCK:
        output = model(sample)
    if output.dim() != 2:
        raise FineTuneError(f"the model's output has shape {tuple(output.shape)}: fine-tuning needs class scores (N × classes)")
    return int(output.shape[1])


def _optimizer(model: nn.Module, settings: FineTuneSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=0.9, nesterov=True, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


def _lr_scheduler(optimizer: torch.optim.Optimizer, settings: FineTuneSettings, steps: int):
    if settings.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=steps, pct_start=_WARMUP)
    if settings.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    return None


def _amp_mode(device: torch.device, amp: bool | None) -> str | None:
    if device.type != "cuda" or amp is False:
        return None
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def _autocast(mode: str | None):
    if mode is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16 if mode == "bfloat16" else torch.float16)


def _has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) for module in model.modules())


def _cpu_view(model: nn.Module) -> nn.Module:
    """The model itself on CPU, or a CPU copy: dependency groups are traced on CPU inputs."""
    if all(p.device.type == "cpu" for p in model.parameters()):
        return model
    return copy.deepcopy(model).cpu()


@torch.no_grad()
def _restore_filters(student: nn.Module, teacher: nn.Module, revived: Mapping[str, Tensor], batchnorms: Mapping[str, str]) -> None:
    """Copy the unpruned model's weights, bias and BN channel into filters that come back (``revived`` True)."""
    students, teachers = dict(student.named_modules()), dict(teacher.named_modules())
    for name, back in revived.items():
        if not bool(back.any()):
            continue
        layer, source = students[name], teachers[name]
        index = filter_index(layer, ~back.to(layer.weight.device))
        layer.weight[index] = source.weight[index].to(layer.weight.dtype)
        mask = back.to(layer.weight.device)
        if layer.bias is not None:
            layer.bias[mask] = source.bias[mask].to(layer.bias.dtype)
        norm_name = batchnorms.get(name)
        if norm_name is not None:
            norm, original = students[norm_name], teachers[norm_name]
            for attribute in ("weight", "bias", "running_mean", "running_var"):
                target, value = getattr(norm, attribute, None), getattr(original, attribute, None)
                if target is not None and value is not None:
                    target[mask] = value[mask].to(target.dtype)


def _changed(before: Mapping[str, Tensor], after: Mapping[str, Tensor]) -> int:
    return sum(int((before[name] != after[name]).sum()) for name in after if name in before)


def fine_tune(
    model: nn.Module,
    plan: SparsityPlan,
    data: TrainingData,
    settings: FineTuneSettings = FineTuneSettings(),
    *,
    scores: Mapping[str, Tensor] | None = None,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    progress: Progress | None = None,
    batch_progress: Callable[[int, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    after_step: Callable[[nn.Module, Mapping[str, Tensor]], None] | None = None,
) -> FineTuneResult:
    """Prune ``model`` by ``plan`` and fine-tune it; returns a new model (``model`` is not modified).

    Args:
        model: the unpruned model (any device; it is copied).
        plan: how many filters each layer loses (uniform, global, overrides or recipe counts).
        data: training and held-out images (:func:`demo_training_data`, :func:`load_training_zip`).
        settings: epochs, learning rate, schedule, distillation, … (:class:`FineTuneSettings`).
        scores: the plan metric's FPGM scores of ``model``, to skip recomputing them.
        device: where to train (default: CUDA when present, else CPU).
        amp: mixed precision on CUDA (default on; ignored elsewhere).
        channels_last: channels-last memory on CUDA for conv models (default on; ignored elsewhere).
        progress: ``progress(epoch, metrics)`` after each epoch (and for epoch 0, before training).
        batch_progress: ``batch_progress(epoch, batch, batches)`` after each step.
        should_stop: polled before every step; True raises :class:`FineTuneStopped`.
        after_step: ``after_step(student, masks)`` after every optimizer step, for checks; it must
            not modify the student.

    Raises:
        FineTuneError: bad settings, labels needed but missing; DataError: labels out of range.
    """
    started = time.perf_counter()
    settings = settings.validated()
    plan = plan.validated()
    target = resolve_device(device)
    if settings.needs_labels and not data.labelled:
        raise FineTuneError("these training images have no labels: fine-tune by distillation alone (distillation weight 1)")
    if data.n_train == 0 or data.n_val == 0:
        raise FineTuneError("fine-tuning needs at least one training and one held-out image")
    schedule = MaskSchedule.from_settings(settings)
    criterion = settings.criterion_for(str(plan.metric))
    input_shape = data.input_shape

    teacher = copy.deepcopy(model).to(target).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    data.check_labels(_output_classes(teacher, data.val_images[:1].to(target)))

    cpu_model = _cpu_view(model)
    same_metric = criterion == f"fpgm-{plan.metric}"
    # The plan's counts rank by its own metric (global mode); the criterion only chooses which filters.
    counts = resolve_counts(cpu_model, plan, group_consistent=settings.group_consistent, input_shape=input_shape,
                            scores=scores)
    generator = torch.Generator().manual_seed(settings.seed)
    masks = select_masks(cpu_model, schedule.counts(counts, 1), criterion, group_consistent=settings.group_consistent,
                         input_shape=input_shape, seed=settings.seed, scores=scores if same_metric else None)
    initial_masks = {name: keep.clone() for name, keep in masks.items()}

    student = copy.deepcopy(model).to(target)
    for parameter in student.parameters():
        parameter.requires_grad_(True)
    amp_mode = _amp_mode(target, amp)
    use_channels_last = target.type == "cuda" and channels_last is not False and _has_conv2d(student)
    if use_channels_last:
        student = student.to(memory_format=torch.channels_last)
    batchnorms = following_batchnorms(cpu_model)
    keeper = MaskKeeper(student, masks, batchnorms=batchnorms)
    # Regrowing filters need a live BN scale to get gradients; their BN channels are zeroed at the end.
    keeper.zero_weights(include_norms=schedule.freezes)

    reference = predict(teacher, data.val_images)
    baseline = compare_outputs(reference, reference, data.val_labels)
    augment = data.default_augment if settings.augment == "auto" else settings.augment

    def measure(epoch: int, loss: float | None, lr: float, changed: int, images: int, train_s: float, epoch_start: float,
                cpu_s: float = 0.0) -> EpochRecord:
        masked_view = student if schedule.freezes else apply_masks(student, keeper.masks)
        result = compare_outputs(predict(masked_view, data.val_images), reference, data.val_labels)
        top1 = None if math.isnan(result.top1) else result.top1
        record = EpochRecord(epoch, loss, top1, result.agreement, result.kl, lr,
                             sum(int((~keep).sum()) for keep in keeper.masks.values()), changed, images,
                             train_s, time.perf_counter() - epoch_start, cpu_s)
        history.append(record)
        if progress is not None:
            progress(epoch, {**record.to_dict(), "epochs": settings.epochs, "baseline_top1": _json_result(baseline)["top1"]})
        return record

    history: list[EpochRecord] = []
    measure(0, None, 0.0, 0, 0, 0.0, time.perf_counter())

    optimizer = _optimizer(student, settings)
    steps_per_epoch = -(-data.n_train // settings.batch_size)
    scheduler = _lr_scheduler(optimizer, settings, settings.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if amp_mode == "float16" else None
    # The images move to the device once, not batch by batch (TrainingData is bounded in size).
    train_images = data.train_images.to(target)
    train_labels = data.train_labels

    for epoch in range(1, settings.epochs + 1):
        epoch_start, cpu_start = time.perf_counter(), time.thread_time()
        student.train()
        # On CPU the loss is read as a number at once; on a GPU it is summed there, read once per epoch.
        total: Tensor | float = torch.zeros((), dtype=torch.float64, device=target) if target.type != "cpu" else 0.0
        seen = 0
        for step, (images, labels) in enumerate(batches(train_images, train_labels, settings.batch_size, generator), start=1):
            if should_stop is not None and should_stop():
                raise FineTuneStopped(f"stopped in epoch {epoch} of {settings.epochs}", history)
            images = augment_batch(images, augment, generator)
            if use_channels_last and images.dim() == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(target, non_blocking=True) if labels is not None and settings.needs_labels else None
            with _autocast(amp_mode):
                with MODEL_LOCK:
                    outputs = student(images)
                    taught = None
                    if settings.distills:
                        with torch.no_grad():
                            taught = teacher(images)
                loss = training_loss(outputs, labels, taught, settings)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            if schedule.freezes:
                keeper.zero_grads()
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if schedule.freezes:
                keeper.zero_weights()
            if after_step is not None:
                after_step(student, keeper.masks)
            total += (loss.detach().double() if target.type != "cpu" else float(loss.detach())) * len(images)
            seen += len(images)
            if batch_progress is not None:
                batch_progress(epoch, step, steps_per_epoch)
        train_seconds, train_cpu = time.perf_counter() - epoch_start, time.thread_time() - cpu_start
        lr = float(optimizer.param_groups[0]["lr"])
        changed = 0
        if schedule.reselects_after(epoch):
            last = epoch >= settings.epochs
            before = keeper.masks
            view = _cpu_view(student)
            new = select_masks(view, schedule.counts(counts, settings.epochs if last else epoch + 1), criterion,
                               group_consistent=settings.group_consistent, input_shape=input_shape,
                               seed=settings.seed + epoch)
            changed = _changed(before, new)
            if schedule.freezes:
                _restore_filters(student, teacher, {name: ~before[name] & new[name] for name in new if name in before}, batchnorms)
            keeper.set_masks(new)
            keeper.zero_weights(include_norms=schedule.freezes or last)
            keeper.zero_optimizer_state(optimizer)
        measure(epoch, float(total) / max(seen, 1), lr, changed, seen, train_seconds, epoch_start, train_cpu)

    student = student.to(memory_format=torch.contiguous_format).eval()
    keeper.zero_weights()  # the final masks, BN channels included, whatever the schedule
    return FineTuneResult(
        model=student,
        masks=keeper.masks,
        initial_masks=initial_masks,
        counts=counts,
        history=history,
        baseline=baseline,
        settings=settings,
        data=dict(data.record),
        device=str(target),
        amp=amp_mode,
        channels_last=use_channels_last,
        threads=torch.get_num_threads(),
        seconds=time.perf_counter() - started,
    )
