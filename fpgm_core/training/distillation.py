"""The training loss: cross-entropy on labels, distillation from the unpruned model, or a mix of both.

Distillation (Hinton et al., 2015) trains the pruned model to match the unpruned model's softened
outputs: KL(softmax(teacher / T) ‖ softmax(student / T)), multiplied by T² so that its gradients
keep their size as T changes. With weight 1 it is the whole loss and needs no labels, so a folder
of unlabelled images can recover a model.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .settings import FineTuneError, FineTuneSettings

__all__ = ["distillation_loss", "training_loss"]


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Mean over the batch of T²·KL(softmax(teacher/T) ‖ softmax(student/T)), computed in float32."""
    log_student = F.log_softmax(student.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher.float() / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * (temperature * temperature)


def training_loss(student: Tensor, labels: Tensor | None, teacher: Tensor | None, settings: FineTuneSettings) -> Tensor:
    """The loss ``settings`` ask for: CE, or (1 − w)·CE + w·distillation, or distillation alone (w = 1)."""
    if not settings.distills:
        if labels is None:
            raise FineTuneError("these images have no labels: train by distillation alone (distillation weight 1)")
        return F.cross_entropy(student.float(), labels)
    if teacher is None:
        raise FineTuneError("distillation needs the unpruned model's outputs")
    distilled = distillation_loss(student, teacher, float(settings.distill_temperature))
    weight = settings.distill_weight
    if weight >= 1.0:
        return distilled
    if labels is None:
        raise FineTuneError("these images have no labels: set the distillation weight to 1 to train on them")
    return (1.0 - weight) * F.cross_entropy(student.float(), labels) + weight * distilled
