"""The bundled demo model: a small residual CNN trained on scikit-learn's 8x8 handwritten digits.

The dashboard needs a real, trained network to prune without asking the user for a
model or a download. ``load_digits`` ships inside scikit-learn, so the data, the
architecture (:class:`DemoNet`), the training recipe (:func:`train_demo`) and the
committed weights (``assets/demo.safetensors``) together make a fully offline,
reproducible example: the held-out accuracy written in ``assets/demo.json`` can be
re-measured from the checkpoint at any time.

This module is deliberately standalone (torch, scikit-learn and safetensors only) so
that it can be imported, tested and re-trained without the rest of the engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn

from .tracing import MODEL_LOCK

__all__ = [
    "DEMO_CHECKPOINT",
    "DEMO_CLASSES",
    "DEMO_INPUT_SHAPE",
    "DEMO_METRICS",
    "DEFAULT_EPOCHS",
    "DemoNet",
    "DigitsSplit",
    "ResidualBlock",
    "TrainingCancelled",
    "accuracy",
    "digits_split",
    "load_demo_model",
    "save_demo_checkpoint",
    "train_demo",
]

DEMO_INPUT_SHAPE: tuple[int, int, int, int] = (1, 1, 8, 8)
DEMO_CLASSES: int = 10
DEFAULT_EPOCHS: int = 30

_ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_CHECKPOINT: Path = _ASSETS / "demo.safetensors"
DEMO_METRICS: Path = _ASSETS / "demo.json"

_TEST_FRACTION = 0.25
_BATCH_SIZE = 64
# One-cycle peak learning rate; 5e-3 gave a smoother loss curve than 1e-2 at the same accuracy.
_MAX_LR = 5e-3


class TrainingCancelled(Exception):
    """Raised by :func:`train_demo` when its ``should_stop`` callback asks it to stop."""


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus identity skip, then ReLU (channels and size unchanged)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        # A separate ReLU after the add keeps one module per graph node, which makes
        # torch.fx graphs and per-module hooks unambiguous.
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + x)


class DemoNet(nn.Module):
    """Small residual CNN for (N, 1, 8, 8) digit images and 10 classes.

    stem conv 1->16 (8x8), block(16), downsample conv 16->32 stride 2 (4x4), block(32),
    global average pool, ``fc`` Linear(32->10). Six Conv2d layers, each followed by
    BatchNorm2d; ``fc`` is registered last so it is the final layer in ``modules()``.
    """

    def __init__(self, width: int = 16, num_classes: int = DEMO_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.layer1 = ResidualBlock(width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.down_bn = nn.BatchNorm2d(2 * width)
        self.down_relu = nn.ReLU()
        self.layer2 = ResidualBlock(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.down_relu(self.down_bn(self.down(x)))
        x = self.layer2(x)
        return self.fc(self.flatten(self.pool(x)))


@dataclass(frozen=True)
class DigitsSplit:
    """Stratified train/test split of the digits: images (N, 1, 8, 8) float32 in [0, 1], labels int64.

    ``train_index``/``test_index`` are the row numbers in ``load_digits()``, so callers
    can check that the two parts are disjoint.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    train_index: torch.Tensor
    test_index: torch.Tensor


def digits_split(seed: int = 0) -> DigitsSplit:
    """Load the bundled digits and split 75/25, stratified by class; same ``seed``, same split."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Raw pixels are integers 0..16; dividing by 16 gives [0, 1] without data-dependent statistics.
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        index, test_size=_TEST_FRACTION, random_state=seed, stratify=digits.target
    )
    train_t = torch.from_numpy(np.sort(train_idx))
    test_t = torch.from_numpy(np.sort(test_idx))
    return DigitsSplit(
        train_x=images[train_t].contiguous(),
        train_y=labels[train_t].contiguous(),
        test_x=images[test_t].contiguous(),
        test_y=labels[test_t].contiguous(),
        train_index=train_t,
        test_index=test_t,
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy (0..1) of ``model`` on ``x``/``y``, in eval mode; the model's mode is restored."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if len(y) == 0:
        raise ValueError("cannot measure accuracy on zero samples")
    return _count_correct(model, x, y, batch_size) / len(y)


def _count_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> int:
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        correct = 0
        with torch.no_grad():
            for start in range(0, len(y), batch_size):
                with MODEL_LOCK.shared():
                    logits = model(x[start : start + batch_size].to(device))
                pred = logits.argmax(dim=1).cpu()
                correct += int((pred == y[start : start + batch_size]).sum())
        return correct
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _deterministic_cpu(seed: int) -> Iterator[None]:
    """Seed torch, force deterministic kernels and one thread; restore all of it on exit.

    One thread because intra-op parallel reductions may sum in a different order from
    run to run, which would break bit-identical weights. These settings are
    process-wide, so other threads training at the same time would be affected too.
    """
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    # fork_rng keeps the caller's global RNG stream untouched by our seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(det, warn_only=warn_only)
            torch.set_num_threads(threads)


def _random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by -1..1 pixels in each direction, filling with background (0)."""
    # Digits are centred but drawn with small offsets; one-pixel jitter is the cheapest
    # augmentation that helps an 8x8 classifier generalise.
    padded = F.pad(x, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (len(x), 2), generator=gen)
    out = torch.empty_like(x)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + 8, dx : dx + 8]
    return out


def train_demo(
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[DemoNet, dict[str, Any]]:
    """Train :class:`DemoNet` on the digits training split; bit-reproducible for a given ``seed``.

    Runs on CPU with one thread (restored afterwards). ``progress(epoch, epochs, mean_loss)``
    is called after each epoch (1-based). ``should_stop()`` is polled before every batch;
    when it returns True, :class:`TrainingCancelled` is raised.

    Returns:
        The model in eval mode, and ``{"test_top1", "train_top1", "test_correct",
        "n_train", "n_test", "epochs", "seed"}`` measured on the held-out split.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    split = digits_split(seed)
    with _deterministic_cpu(seed):
        model = DemoNet()
        gen = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=_MAX_LR, weight_decay=1e-4)
        steps_per_epoch = -(-len(split.train_y) // _BATCH_SIZE)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=_MAX_LR, total_steps=epochs * steps_per_epoch
        )
        n = len(split.train_y)
        for epoch in range(1, epochs + 1):
            model.train()
            order = torch.randperm(n, generator=gen)
            total_loss = 0.0
            for start in range(0, n, _BATCH_SIZE):
                if should_stop is not None and should_stop():
                    raise TrainingCancelled(f"training stopped at epoch {epoch} of {epochs}")
                idx = order[start : start + _BATCH_SIZE]
                xb = _random_shift(split.train_x[idx], gen)
                with MODEL_LOCK.shared():
                    loss = F.cross_entropy(model(xb), split.train_y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total_loss += loss.detach().item() * len(idx)
            if progress is not None:
                progress(epoch, epochs, total_loss / n)
        model.eval()
        test_correct = _count_correct(model, split.test_x, split.test_y, 512)
        train_correct = _count_correct(model, split.train_x, split.train_y, 512)
    metrics: dict[str, Any] = {
        "test_top1": test_correct / len(split.test_y),
        "train_top1": train_correct / len(split.train_y),
        "test_correct": test_correct,
        "n_train": len(split.train_y),
        "n_test": len(split.test_y),
        "epochs": epochs,
        "seed": seed,
    }
    return model, metrics


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a partial one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_demo_checkpoint(model: nn.Module, metrics: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    """Write ``demo.safetensors`` (full state_dict, BN buffers included) and ``demo.json`` into ``directory``.

    Each file is replaced atomically. Returns the two paths written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # clone() detaches the tensors from the model and makes them contiguous, as safetensors requires.
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    record = dict(metrics)
    record.setdefault("torch_version", torch.__version__)
    record.setdefault("params", sum(p.numel() for p in model.parameters()))
    weights_path = directory / DEMO_CHECKPOINT.name
    metrics_path = directory / DEMO_METRICS.name
    _atomic_write(weights_path, save(state, metadata={"format": "pt"}))
    _atomic_write(metrics_path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return weights_path, metrics_path


def load_demo_model(path: Path = DEMO_CHECKPOINT) -> DemoNet:
    """Build :class:`DemoNet` and load the committed weights strictly, on CPU, in eval mode.

    Raises:
        FileNotFoundError: the checkpoint is missing (e.g. the assets were not installed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"demo checkpoint not found: {path}")
    model = DemoNet()
    model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    return model.eval()
