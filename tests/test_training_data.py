"""fpgm_core.training.data: the demo's training split, zips with train/ and val/, seeded stratified splits."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from fpgm_core.demo import digits_split
from fpgm_core.evaluation import DataError, image_transform
from fpgm_core.training import demo_training_data, load_training_zip, stratified_split
from fpgm_core.training.data import augment_batch

TRANSFORM = image_transform("demo")


def _png(seed: int) -> bytes:
    image = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 12), dtype=np.uint8), mode="L").save(image, "PNG")
    return image.getvalue()


def make_zip(layout: dict[str, int], extra: dict[str, bytes] | None = None) -> bytes:
    """A zip with ``count`` PNGs in each folder of ``layout`` (``"train/3"``: 4 → train/3/0.png …)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        seed = 0
        for folder, count in layout.items():
            for i in range(count):
                seed += 1
                archive.writestr(f"{folder}/{i}.png" if folder else f"{i}.png", _png(seed))
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return buffer.getvalue()


def test_the_demo_trains_on_its_training_split_and_measures_on_the_held_out_one():
    data, split = demo_training_data(), digits_split(0)
    assert torch.equal(data.train_images, split.train_x) and torch.equal(data.val_labels, split.test_y)
    assert set(split.train_index.tolist()).isdisjoint(split.test_index.tolist())
    assert (data.n_train, data.n_val) == (1347, 450) and data.default_augment == "shift"
    assert data.record == {"kind": "demo", "split_seed": 0, "train": 1347, "val": 450}


def test_train_and_val_folders_share_class_indices_even_when_val_lacks_a_class():
    content = make_zip({"data/train/ant": 3, "data/train/bee": 3, "data/train/cat": 3, "data/val/bee": 2, "data/val/cat": 1})
    data = load_training_zip(content, TRANSFORM, name="pets.zip")
    assert data.classes == ("ant", "bee", "cat")
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.val_labels.tolist() == [1, 1, 2]  # bee is 1 in both, though val has no ant
    assert data.record["split"] == "folders" and data.record["name"] == "pets.zip" and len(data.record["sha256"]) == 64
    assert data.train_images.shape == (9, 1, 8, 8)


def test_one_folder_is_split_by_class_with_a_recorded_seed():
    content = make_zip({"0": 10, "1": 10, "2": 5})
    first = load_training_zip(content, TRANSFORM, val_fraction=0.2, split_seed=3)
    again = load_training_zip(content, TRANSFORM, val_fraction=0.2, split_seed=3)
    other = load_training_zip(content, TRANSFORM, val_fraction=0.2, split_seed=4)
    assert torch.equal(first.val_images, again.val_images) and not torch.equal(first.val_images, other.val_images)
    assert sorted(first.val_labels.tolist()) == [0, 0, 1, 1, 2]  # 20 % of each class
    assert first.n_train == 20
    assert first.record | {"sha256": None} == {"kind": "zip", "name": "upload", "sha256": None, "split": "stratified",
                                                "split_seed": 3, "val_fraction": 0.2, "train": 20, "val": 5,
                                                "rule": "folder names are class indices"}


def test_stratified_split_holds_out_part_of_every_class_and_keeps_one_to_train():
    labels = torch.tensor([0] * 9 + [1] * 2 + [2])
    train, val = stratified_split(labels, 0.25, seed=0)
    assert sorted(labels[val].tolist()) == [0, 0, 1] and set(labels[train].tolist()) == {0, 1, 2}
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(train) + len(val) == len(labels)


def test_a_flat_folder_of_images_is_unlabelled():
    data = load_training_zip(make_zip({"": 6}), TRANSFORM)
    assert data.train_labels is None and data.val_labels is None and not data.labelled
    assert data.n_train + data.n_val == 6 and data.record["split"] == "random"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (make_zip({}, {"readme.txt": b"hello"}), "no images"),
        (make_zip({"train/a": 2, "val/a": 0}, {"val/a/notes.txt": b"x"}), "val/ holds no images"),
        (make_zip({"a": 2}, {"../../escaped.png": _png(1)}), "outside the archive"),
        (b"not a zip at all", "not a readable zip"),
        (make_zip({"a": 1}), "cannot be split"),
    ],
)
def test_bad_zips_are_refused_by_name(content, message):
    with pytest.raises(DataError, match=message):
        load_training_zip(content, TRANSFORM)


def test_too_many_images_are_refused():
    with pytest.raises(DataError, match="at most 5"):
        load_training_zip(make_zip({"a": 3, "b": 3}), TRANSFORM, max_images=5)


def test_shift_moves_each_image_by_at_most_one_pixel_and_flip_mirrors():
    images = torch.zeros(64, 1, 8, 8)
    images[:, 0, 3, 4] = 1.0
    shifted = augment_batch(images, "shift", torch.Generator().manual_seed(0))
    positions = {tuple(torch.nonzero(image[0])[0].tolist()) for image in shifted}
    assert positions == {(r, c) for r in (2, 3, 4) for c in (3, 4, 5)}
    assert torch.equal(augment_batch(images, "none", torch.Generator()), images)
    flipped = augment_batch(images, "flip", torch.Generator().manual_seed(0))
    columns = {int(torch.nonzero(image[0])[0][1]) for image in flipped}
    assert columns == {4, 3}
