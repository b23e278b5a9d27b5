"""Images to fine-tune on and the held-out images to measure it with.

* The demo: the digits' training split (1,347 images) to train on; its held-out split (450 images,
  which the demo model never saw) only to measure. Fine-tuning never trains on held-out images.
* A zip, read with the same safe extraction as evaluation (:func:`fpgm_core.evaluation.extract_zip`:
  no absolute paths, ``..``, links; bounded size and count), either with ``train/`` and ``val/``
  folders, each in ImageFolder layout (``train/CLASS/IMAGE.png``), or one ImageFolder split into
  training and held-out images by class (stratified) with a seed, which is recorded.
* Images without class folders (a flat folder) are unlabelled: they can train by distillation
  alone, and are measured by agreement with the unpruned model.

Class indices follow the evaluation rules (numbers, category names, or sorted names), decided
over the training and held-out folders together so both get the same indices.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..evaluation import DataError, class_indices, dataset_root, extract_zip, image_files, read_images
from .settings import FineTuneError

__all__ = [
    "MAX_TRAINING_IMAGES",
    "DEFAULT_VAL_FRACTION",
    "TrainingData",
    "demo_training_data",
    "load_training_zip",
    "stratified_split",
    "augment_batch",
    "batches",
]

# Transformed images are held in memory as float32: 2000 photos at 224 px are ~1.2 GB.
MAX_TRAINING_IMAGES = 2000
DEFAULT_VAL_FRACTION = 0.2


@dataclass(frozen=True)
class TrainingData:
    """Training images and labels (None: unlabelled), held-out images and labels, and where they came from.

    ``record`` is the JSON-ready description a recipe keeps (kind, name, digest, split seed and
    fraction, counts), so a replay can check it is given the same data.
    """

    train_images: Tensor
    train_labels: Tensor | None
    val_images: Tensor
    val_labels: Tensor | None
    classes: tuple[str, ...]
    source: str
    record: dict[str, Any] = field(default_factory=dict)
    default_augment: str = "none"

    @property
    def n_train(self) -> int:
        """Training images."""
        return int(self.train_images.shape[0])

    @property
    def n_val(self) -> int:
        """Held-out images."""
        return int(self.val_images.shape[0])

    @property
    def labelled(self) -> bool:
        """Whether the training images have labels."""
        return self.train_labels is not None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input of batch size 1."""
        return (1, *self.train_images.shape[1:])

    def check_labels(self, outputs: int) -> None:
        """DataError unless every label is a valid class index of a model with ``outputs`` classes."""
        for what, labels in (("training", self.train_labels), ("held-out", self.val_labels)):
            if labels is None or labels.numel() == 0:
                continue
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= outputs:
                bad = high if high >= outputs else low
                raise DataError(
                    f"{what} class index {bad} is out of range: the model has {outputs} outputs "
                    "(check the folder names: see the class-index rules)"
                )


def demo_training_data(seed: int = 0) -> TrainingData:
    """The digits' training split to train on and its held-out split to measure on (the demo's own split)."""
    from ..demo import digits_split

    split = digits_split(seed)
    return TrainingData(
        split.train_x, split.train_y, split.test_x, split.test_y, tuple(str(i) for i in range(10)),
        f"digits: {len(split.train_y)} training images, measured on the {len(split.test_y)} held-out (seed {seed})",
        {"kind": "demo", "split_seed": seed, "train": len(split.train_y), "val": len(split.test_y)},
        default_augment="shift",
    )


def stratified_split(labels: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Sorted (train, held-out) indices: per class, ``round(fraction·n)`` seeded picks are held out.

    Every class with at least two images keeps one for training and holds one out.
    """
    generator = torch.Generator().manual_seed(int(seed))
    train, val = [], []
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held = min(max(round(val_fraction * len(members)), 1 if len(members) > 1 else 0), len(members) - 1)
        val.append(members[:held])
        train.append(members[held:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values


def _random_split(count: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    order = torch.randperm(count, generator=torch.Generator().manual_seed(int(seed)))
    held = min(max(round(val_fraction * count), 1), count - 1)
    return torch.sort(order[held:]).values, torch.sort(order[:held]).values


def _class_folders(root: Path) -> list[str]:
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir())


def _read_folder(root: Path, transform: Callable, lookup: dict[str, int] | None) -> tuple[Tensor, Tensor | None, int]:
    """Images under ``root`` and their labels: by class folder, or None for a flat folder of images."""
    if lookup is not None:
        files = [(path, folder) for folder in _class_folders(root) for path in image_files(root / folder)]
        labels = torch.tensor([lookup[folder] for _, folder in files], dtype=torch.int64)
        paths = [path for path, _ in files]
    else:
        paths, labels = image_files(root), None
    if not paths:
        return torch.empty(0), labels, 0
    return read_images(paths, transform, root), labels, len(paths)


def load_training_zip(
    source: str | os.PathLike | bytes,
    transform: Callable,
    *,
    categories: Sequence[str] = (),
    val_fraction: float = DEFAULT_VAL_FRACTION,
    split_seed: int = 0,
    max_images: int = MAX_TRAINING_IMAGES,
    name: str | None = None,
) -> TrainingData:
    """Training and held-out images of a zip: ``train/`` + ``val/`` folders, or one folder split by class.

    Args:
        source: the zip's path or bytes.
        transform: PIL image → tensor (:func:`fpgm_core.evaluation.image_transform` of the architecture).
        categories: the model's class names, so that folders may be named by category.
        val_fraction: with one folder, the fraction of each class held out.
        split_seed: with one folder, the seed of which images are held out.
        max_images: refuse (DataError) zips with more images than this.
        name: the zip's name for messages and the record (default: its path, or "upload").
    """
    if not 0 < val_fraction < 1 or math.isnan(val_fraction):
        raise FineTuneError(f"the held-out fraction must be between 0 and 1, got {val_fraction!r}")
    content = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes() if Path(source).is_file() else None
    if content is None:
        raise DataError(f"training data {str(source)!r} is neither 'demo' nor a zip file that exists")
    label = name or (Path(source).name if not isinstance(source, (bytes, bytearray)) else "upload")
    record: dict[str, Any] = {"kind": "zip", "name": label, "sha256": hashlib.sha256(content).hexdigest()}
    with tempfile.TemporaryDirectory(prefix="fpgm-train-") as tmp:
        extract_zip(bytes(content), tmp)
        root = dataset_root(Path(tmp))
        parts = {entry.name.lower(): entry for entry in root.iterdir() if entry.is_dir()}
        presplit = "train" in parts and ("val" in parts or "validation" in parts)
        folders = [parts["train"], parts.get("val") or parts["validation"]] if presplit else [root]
        counted = sum(len(image_files(folder)) for folder in folders)
        if counted == 0:
            raise DataError(f"{label}: no images found (expected train/ and val/ folders, or CLASS/IMAGE.png)")
        if counted > max_images:
            raise DataError(f"{label} holds {counted} images; at most {max_images} are accepted for fine-tuning")
        names = sorted({folder for part in folders for folder in _class_folders(part)})
        lookup, rule = class_indices(names, categories) if names else (None, "no class folders: unlabelled")
        if presplit:
            train_x, train_y, n_train = _read_folder(folders[0], transform, lookup)
            val_x, val_y, n_val = _read_folder(folders[1], transform, lookup)
            if n_train == 0 or n_val == 0:
                raise DataError(f"{label}: {'train/' if n_train == 0 else 'val/'} holds no images")
            record.update(split="folders", train=n_train, val=n_val)
        else:
            images, labels, count = _read_folder(root, transform, lookup)
            if count < 2:
                raise DataError(f"{label}: one image cannot be split into training and held-out images")
            train_idx, val_idx = (stratified_split(labels, val_fraction, split_seed) if labels is not None
                                  else _random_split(count, val_fraction, split_seed))
            train_x, val_x = images[train_idx], images[val_idx]
            train_y = labels[train_idx] if labels is not None else None
            val_y = labels[val_idx] if labels is not None else None
            record.update(split="stratified" if labels is not None else "random", split_seed=int(split_seed),
                          val_fraction=float(val_fraction), train=len(train_idx), val=len(val_idx))
    if train_x.shape[1:] != val_x.shape[1:]:
        raise DataError("training and held-out images differ in size after the transform")
    record["rule"] = rule
    split_text = "train/ and val/" if presplit else f"{record['split']} split, seed {split_seed}, {val_fraction:.0%} held out"
    source_text = f"{label}: {len(train_x)} training, {len(val_x)} held-out images ({split_text}; {rule})"
    return TrainingData(train_x, train_y, val_x, val_y, tuple(names), source_text, record, default_augment="none")


def augment_batch(images: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """``images`` augmented: ``shift`` moves each by −1…1 pixel per axis (background 0), ``flip`` mirrors half."""
    if kind == "none":
        return images
    if kind == "flip":
        flips = torch.rand(len(images), generator=generator) < 0.5
        out = images.clone()
        out[flips.to(images.device)] = images[flips.to(images.device)].flip(-1)
        return out
    if kind == "shift":
        height, width = images.shape[-2:]
        offsets = torch.randint(0, 3, (len(images), 2), generator=generator).to(images.device)
        # Every 3×3 placement of each image at once, then one pick per image: no Python loop over images.
        windows = F.pad(images, (1, 1, 1, 1)).unfold(-2, height, 1).unfold(-2, width, 1)
        rows = torch.arange(len(images), device=images.device)
        return windows[rows, :, offsets[:, 0], offsets[:, 1]]
    raise FineTuneError(f"unknown augmentation {kind!r}")


def batches(
    images: Tensor, labels: Tensor | None, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """One epoch of shuffled batches (the last one may be smaller), order drawn from ``generator``."""
    order = torch.randperm(len(images), generator=generator)
    for start in range(0, len(images), batch_size):
        index = order[start : start + batch_size]
        yield images[index], (labels[index] if labels is not None else None)
