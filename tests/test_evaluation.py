"""fpgm_core.evaluation: accuracy and fidelity on the held-out digits, ImageFolder zips, hostile zips."""

from __future__ import annotations

import io
import json
import stat
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import fpgm_core.evaluation as evaluation
from fpgm_core import SparsityPlan, build_model, model_fingerprint, plan_masks
from fpgm_core.demo import DEMO_METRICS
from fpgm_core.evaluation import (
    DataError,
    EvaluationCancelled,
    compare_outputs,
    demo_data,
    evaluate_masks,
    evaluate_model,
    extract_zip,
    image_transform,
    load_image_zip,
    model_categories,
    predict,
)


def png(seed: int, size=(20, 24), mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (*size, 3) if mode == "RGB" else size
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buffer, "PNG")
    return buffer.getvalue()


def image_zip(folders, per_class: int = 3, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for c, folder in enumerate(folders):
            for i in range(per_class):
                archive.writestr(f"{prefix}{folder}/img{i}.png", png(10 * c + i))
    return buffer.getvalue()


# The demo's 8×8 convolutions are too small to split across threads (see conftest).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo():
    return build_model("demo", "default").model


@pytest.fixture(scope="module")
def digits():
    return demo_data()


@pytest.fixture(scope="module")
def resnet():
    return build_model("resnet18", "none").model


def test_committed_checkpoint_reproduces_its_reported_accuracy(demo, digits):
    reported = json.loads(DEMO_METRICS.read_text())
    result = evaluate_model(demo, digits)
    assert result.n == reported["n_test"] == 450
    assert result.correct == reported["test_correct"]
    assert result.top1 == reported["test_top1"]
    assert result.agreement == 1.0 and result.kl == 0.0


def test_sparsity_zero_equals_the_original_and_high_sparsity_is_clearly_worse(demo, digits):
    reference = predict(demo, digits.images)
    original = evaluate_model(demo, digits)
    untouched = evaluate_masks(demo, plan_masks(demo, SparsityPlan(sparsity=0.0)), digits, reference=reference)
    assert untouched.top1 == original.top1 and untouched.agreement == 1.0 and untouched.kl == 0.0
    pruned = evaluate_masks(demo, plan_masks(demo, SparsityPlan(sparsity=0.9)), digits, reference=reference)
    assert pruned.top1 < original.top1 - 0.2
    assert pruned.agreement < 0.9 and pruned.kl > 0.1


def test_evaluating_masks_never_modifies_the_model(demo, digits):
    before = model_fingerprint(demo)
    evaluate_masks(demo, plan_masks(demo, SparsityPlan(sparsity=0.5)), digits)
    assert model_fingerprint(demo) == before
    assert not demo.training


def test_predict_restores_training_mode_and_can_be_stopped(demo, digits):
    demo.train()
    try:
        logits = predict(demo, digits.images[:10], batch_size=4)
        assert demo.training and logits.shape == (10, 10)
        with pytest.raises(EvaluationCancelled):
            predict(demo, digits.images, should_stop=lambda: True)
    finally:
        demo.eval()


def test_compare_outputs_counts_agreement_and_kl_by_hand():
    reference = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 0.0]])
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [1.0, 3.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    result = compare_outputs(logits, reference, labels)
    assert result.n == 4 and result.correct == 3 and result.top1 == 0.75
    assert result.agreement == 0.5
    p, q = reference.double().softmax(1), logits.double().softmax(1)
    assert result.kl == pytest.approx(float((p * (p.log() - q.log())).sum(1).mean()), abs=1e-12)
    assert compare_outputs(reference, reference, labels).kl == 0.0
    with pytest.raises(DataError, match="out of range"):
        compare_outputs(logits, reference, torch.tensor([0, 1, 2, 0]))


def test_image_folder_zip_with_a_torchvision_model(resnet):
    data = load_image_zip(image_zip(["1", "207", "948"], prefix="photos/"), image_transform("resnet18"))
    assert data.n == 9 and data.classes == ("1", "207", "948")
    assert data.images.shape == (9, 3, 224, 224)
    assert data.labels.tolist() == [1] * 3 + [207] * 3 + [948] * 3
    assert "class indices" in data.source
    result = evaluate_model(resnet, data)
    assert result.n == 9 and 0.0 <= result.top1 <= 1.0 and result.agreement == 1.0


def test_class_index_rules_sorted_names_and_category_names():
    sorted_names = load_image_zip(image_zip(["dog", "ant", "cat"], per_class=1), image_transform("demo"))
    assert sorted_names.classes == ("ant", "cat", "dog") and sorted_names.labels.tolist() == [0, 1, 2]
    assert "sorted" in sorted_names.source
    categories = model_categories("resnet18")
    named = load_image_zip(image_zip(["tench", "goldfish"], per_class=1), image_transform("demo"), categories=categories)
    assert named.labels.tolist() == [categories.index("goldfish"), categories.index("tench")] == [1, 0]


def test_demo_transform_gives_digit_sized_greyscale(demo):
    data = load_image_zip(image_zip([str(d) for d in range(3)], per_class=2), image_transform("demo"))
    assert data.images.shape == (6, 1, 8, 8) and float(data.images.min()) >= 0 and float(data.images.max()) <= 1
    assert evaluate_model(demo, data).n == 6


def hostile_zip(name: str, data: bytes = b"x", symlink: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ok/fine.png", png(0))
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content, message",
    [
        (hostile_zip("../escaped.png"), "outside the archive"),
        (hostile_zip("ok/../../escaped.png"), "outside the archive"),
        (hostile_zip("/tmp/escaped.png"), "outside the archive"),
        (hostile_zip("C:/escaped.png"), "outside the archive"),
        (hostile_zip("ok/link.png", b"/etc/passwd", symlink=True), "symbolic link"),
        (b"not a zip at all", "not a readable zip"),
    ],
)
def test_hostile_zips_are_refused_and_write_nothing_outside(tmp_path, content, message):
    target = tmp_path / "inner" / "deeper"
    target.mkdir(parents=True)
    with pytest.raises(DataError, match=message):
        extract_zip(content, target)
    with pytest.raises(DataError, match=message):
        load_image_zip(content, image_transform("demo"))
    assert not list(tmp_path.rglob("escaped.png"))
    assert not (target / "ok" / "link.png").is_symlink()


def test_zip_bombs_and_entry_floods_are_bounded(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a/zeros.png", b"\0" * 4_000_000)
    monkeypatch.setattr(evaluation, "MAX_ZIP_BYTES", 1_000_000)
    with pytest.raises(DataError, match="inflates to more than"):
        extract_zip(buffer.getvalue(), tmp_path)
    monkeypatch.setattr(evaluation, "MAX_ZIP_ENTRIES", 4)
    with pytest.raises(DataError, match="entries"):
        extract_zip(image_zip(["a", "b"], per_class=3), tmp_path)


def test_unusable_zips_name_the_problem():
    demo_transform = image_transform("demo")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("loose.png", png(1))
        archive.writestr("__MACOSX/a/._loose.png", b"resource fork")
    with pytest.raises(DataError, match="no class folders"):
        load_image_zip(buffer.getvalue(), demo_transform)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a/broken.png", b"\x89PNG but not really")
    with pytest.raises(DataError, match="not a readable image"):
        load_image_zip(buffer.getvalue(), demo_transform)
    with pytest.raises(DataError, match="at most 5"):
        load_image_zip(image_zip(["a", "b"], per_class=3), demo_transform, max_images=5)
    with pytest.raises(DataError, match="no image transforms"):
        image_transform("not_an_arch")
