"""fpgm_core.evaluation for every source: timm's pretrained_cfg transforms and class names, your own
models' and ONNX graphs' ImageNet preprocessing at their input size."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import factory_models
from fpgm_core import build_model
from fpgm_core.evaluation import DataError, image_transform, load_image_zip, model_categories


def _image(seed: int, size=(40, 52), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (*size, 3) if mode == "RGB" else size
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def test_timm_transform_is_the_one_its_pretrained_cfg_describes():
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    for name in ("resnet50", "inception_v3"):  # 224 px bicubic crop 0.95; 299 px
        ours = image_transform(f"timm:{name}")
        theirs = create_transform(**resolve_data_config(pretrained_cfg=get_pretrained_cfg(name).to_dict()))
        image = _image(1, (301, 257))
        assert torch.equal(ours(image), theirs(image))
        assert ours(image).shape[1:] == get_pretrained_cfg(name).input_size[1:]


def test_timm_transform_of_a_model_follows_that_model_s_cfg():
    loaded = build_model("timm:mobilenetv3_small_050", "none")
    transform = image_transform(loaded.arch, model=loaded.model, input_shape=loaded.input_shape)
    assert transform(_image(2)).shape == (3, 224, 224)


def test_timm_class_names_are_imagenet_s_and_agree_with_torchvision():
    names = model_categories("timm:resnet18")
    torchvision_names = model_categories("resnet18")
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish"
    same = sum(a.lower() == b.lower() for a, b in zip(names, torchvision_names))
    assert same > 900  # WordNet's first lemma vs torchvision's hand-edited names: most agree


def test_a_zip_named_by_timm_categories_gets_their_indices():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for folder in ("goldfish", "tench"):
            for index in range(2):
                image = io.BytesIO()
                _image(index).save(image, "PNG")
                archive.writestr(f"{folder}/{index}.png", image.getvalue())
    data = load_image_zip(buffer.getvalue(), image_transform("timm:resnet18"), categories=model_categories("timm:resnet18"))
    assert data.labels.tolist() == [1, 1, 0, 0] and data.images.shape[1:] == (3, 224, 224)
    assert "category names" in data.source


def test_own_models_get_imagenet_preprocessing_at_their_input_size_and_their_own_class_names():
    loaded = build_model("factory_models:small_net")
    transform = image_transform(loaded.arch, model=loaded.model, input_shape=loaded.input_shape)
    tensor = transform(_image(3))
    assert tensor.shape == (3, 16, 16)
    assert tensor.min() < 0 < tensor.max()  # normalised by ImageNet's mean and std
    assert model_categories(loaded.arch, model=loaded.model) == factory_models.SmallNet.categories
    grey = image_transform("model.onnx", input_shape=(1, 1, 8, 8))(_image(4))
    assert grey.shape == (1, 8, 8) and 0 <= float(grey.min()) <= float(grey.max()) <= 1
    assert model_categories("model.onnx") == ()
    with pytest.raises(DataError, match="1 or 3 channels"):
        image_transform("model.onnx", input_shape=(1, 5, 8, 8))
    with pytest.raises(DataError, match="4-D input"):
        image_transform("model.onnx", input_shape=(1, 16))
