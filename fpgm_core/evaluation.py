"""How good a pruned model still is: top-1 accuracy and label-free fidelity on held-out images.

Fidelity compares the pruned model with the unpruned one on the same images, so it needs no
labels: *agreement* is the fraction of images whose predicted class is unchanged, and *KL* the
mean KL(original ‖ pruned) between their softmax outputs. Images come from the demo model's
held-out digits split (:func:`demo_data`) or from a user's zip in ImageFolder layout
(:func:`load_image_zip`), transformed as the model expects: its torchvision weights' or timm
``pretrained_cfg``'s transforms, or ImageNet's at the model's input size (ONNX graphs, your own code).

Class indices of a zip: folders named by integers (``0/``, ``207/``) are those class indices;
folders named by the weights' category names (``goldfish/``) get that category's index;
otherwise folder names sorted alphabetically are indices 0, 1, 2, … (torchvision's ImageFolder
rule), so they must sort in the model's class order.
"""

from __future__ import annotations

import os
import stat
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import FpgmError
from .masking import apply_masks, check_masks
from .tracing import MODEL_LOCK

__all__ = [
    "MAX_ZIP_ENTRIES",
    "MAX_ZIP_BYTES",
    "MAX_IMAGES",
    "DataError",
    "EvaluationCancelled",
    "EvalData",
    "EvalResult",
    "demo_data",
    "image_transform",
    "model_categories",
    "extract_zip",
    "dataset_root",
    "class_indices",
    "image_files",
    "read_images",
    "load_image_folder",
    "load_image_zip",
    "predict",
    "compare_outputs",
    "evaluate_model",
    "evaluate_masks",
]

# Bounds on an uploaded zip, checked while extracting (headers can lie about sizes): enough for
# a few thousand photos, not enough for a zip bomb to fill the disk.
MAX_ZIP_ENTRIES = 20_000
MAX_ZIP_BYTES = 1 << 30
# Images are held in memory as float32 tensors after the transforms: 1000 at 224 px is ~600 MB.
MAX_IMAGES = 1000
# Input elements per forward batch (8 M floats = 32 MB): the whole 450-image digits split goes
# in one batch, 224-px photos in batches of ~55.
_BATCH_ELEMENTS = 1 << 23
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(FpgmError):
    """Evaluation data could not be read: a bad or hostile zip, no images, labels that do not fit."""


class EvaluationCancelled(Exception):
    """Raised when a ``should_stop`` callback asks a running evaluation to stop."""


@dataclass(frozen=True)
class EvalData:
    """Images ready for the model (N, C, H, W), their class indices, and where they came from."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    source: str

    @property
    def n(self) -> int:
        """Number of images."""
        return int(self.labels.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input batch of size 1, for FLOP counting."""
        return (1, *self.images.shape[1:])


@dataclass(frozen=True)
class EvalResult:
    """Top-1 accuracy and fidelity to the unpruned model, over ``n`` images."""

    top1: float
    agreement: float
    kl: float
    n: int
    correct: int

    def to_dict(self) -> dict:
        """A JSON-ready dict of the result."""
        return asdict(self)


def demo_data(seed: int = 0) -> EvalData:
    """The demo model's held-out test split (450 digits it never trained on)."""
    from .demo import digits_split

    split = digits_split(seed)
    return EvalData(split.test_x, split.test_y, tuple(str(i) for i in range(10)), f"digits held-out split (seed {seed})")


# Where a model brings no preprocessing of its own (an ONNX graph, your own code): ImageNet's.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CROP_FRACTION = 0.875


def _generic_transform(input_shape: tuple[int, ...] | None) -> Callable:
    """Resize, centre crop to the input's H×W and, for 3 channels, ImageNet normalisation."""
    from torchvision import transforms

    if input_shape is None or len(input_shape) != 4:
        raise DataError("images need a 4-D input (N, C, H, W); this model's input shape is not one")
    channels, height, width = (int(d) for d in input_shape[1:])
    steps: list = [transforms.Grayscale(1)] if channels == 1 else [transforms.Lambda(lambda image: image.convert("RGB"))]
    if channels not in (1, 3):
        raise DataError(f"images have 1 or 3 channels; this model's input has {channels}")
    steps += [transforms.Resize(int(round(min(height, width) / _CROP_FRACTION)), antialias=True),
              transforms.CenterCrop((height, width)), transforms.ToTensor()]
    if channels == 3:
        steps.append(transforms.Normalize(_IMAGENET_MEAN, _IMAGENET_STD))
    return transforms.Compose(steps)


def image_transform(arch: str, *, model: nn.Module | None = None, input_shape: tuple[int, ...] | None = None) -> Callable:
    """The transform turning a PIL image into the tensor ``arch`` expects.

    torchvision architectures use their default weights' transforms (resize, centre crop,
    normalise; built offline, nothing is downloaded); ``timm:NAME`` (and any model carrying a timm
    ``pretrained_cfg``) those of its ``pretrained_cfg``. ``demo`` takes 8×8 greyscale in [0, 1],
    light digits on a dark ground, like the scikit-learn digits it was trained on. Other models (an
    ONNX graph, your own code) get ImageNet's: resize, centre crop to ``input_shape``'s H×W,
    ImageNet mean/std for 3 channels.
    """
    import torchvision
    from torchvision import transforms

    from .models import source_kind

    if arch == "demo":
        return transforms.Compose([transforms.Grayscale(1), transforms.Resize((8, 8), antialias=True), transforms.ToTensor()])
    kind = source_kind(arch)
    if kind == "timm" or isinstance(getattr(model, "pretrained_cfg", None), dict):
        from .models.timm import timm_transform

        try:
            return timm_transform(arch, model=model if isinstance(getattr(model, "pretrained_cfg", None), dict) else None)
        except FpgmError:
            raise
        except Exception as exc:  # a cfg without the fields timm's resolver needs
            raise DataError(f"no image transforms known for {arch!r} ({exc})") from exc
    if kind == "torchvision":
        try:
            return torchvision.models.get_model_weights(arch).DEFAULT.transforms()
        except Exception as exc:  # unknown names raise ValueError or KeyError depending on the path
            raise DataError(f"no image transforms known for architecture {arch!r}") from exc
    return _generic_transform(input_shape)


def model_categories(arch: str, *, model: nn.Module | None = None) -> tuple[str, ...]:
    """The class names of ``arch``'s default weights (digits 0–9 for ``demo``), or () if none.

    timm models (and models carrying a timm ``pretrained_cfg``) name their classes from it; your
    own model may carry a ``categories`` (or ``class_names``) sequence.
    """
    from .models import source_kind

    if arch == "demo":
        return tuple(str(i) for i in range(10))
    for attribute in ("categories", "class_names"):
        names = getattr(model, attribute, None)
        if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
            return tuple(names)
    kind = source_kind(arch)
    if kind == "timm" or isinstance(getattr(model, "pretrained_cfg", None), dict):
        from .models.timm import timm_categories

        try:
            return timm_categories(arch, model=model if isinstance(getattr(model, "pretrained_cfg", None), dict) else None)
        except Exception:  # a cfg that names no label set simply has no names
            return ()
    if kind != "torchvision":
        return ()
    import torchvision

    try:
        return tuple(torchvision.models.get_model_weights(arch).DEFAULT.meta.get("categories") or ())
    except Exception:  # an architecture without registered weights simply has no names
        return ()


def _safe_member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The entry's relative path, None for entries to skip, DataError for hostile ones."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in path.parts:
        raise DataError(f"zip entry {info.filename!r} points outside the archive: refused")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DataError(f"zip entry {info.filename!r} is a symbolic link: refused")
    # macOS resource forks and hidden files would otherwise become classes or bad images.
    if not path.parts or path.parts[0] == "__MACOSX" or any(part.startswith(".") for part in path.parts):
        return None
    return path


def extract_zip(source: str | os.PathLike | bytes, directory: str | os.PathLike) -> int:
    """Extract a zip safely into ``directory``; returns the number of files written.

    Refuses (DataError) absolute paths, ``..`` entries, symbolic links, encrypted entries, more
    than MAX_ZIP_ENTRIES entries or more than MAX_ZIP_BYTES uncompressed, counting the bytes
    actually inflated, not the sizes the headers claim.
    """
    import io

    directory = Path(directory)
    try:
        archive = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"not a readable zip file ({exc})") from exc
    written = 0
    total = 0
    with archive:
        members = archive.infolist()
        if len(members) > MAX_ZIP_ENTRIES:
            raise DataError(f"the zip has {len(members)} entries; at most {MAX_ZIP_ENTRIES} are accepted")
        for info in members:
            path = _safe_member_path(info)
            if path is None:
                continue
            target = directory.joinpath(*path.parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if info.flag_bits & 0x1:
                raise DataError(f"zip entry {info.filename!r} is encrypted: refused")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        total += len(chunk)
                        if total > MAX_ZIP_BYTES:
                            raise DataError(f"the zip inflates to more than {MAX_ZIP_BYTES >> 20} MB: refused")
                        dst.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, OSError, EOFError) as exc:
                raise DataError(f"zip entry {info.filename!r} could not be read ({exc})") from exc
            written += 1
    return written


def dataset_root(directory: Path) -> Path:
    """The folder holding the class folders: descends through single wrapper folders (``data/``)."""
    root = Path(directory)
    while True:
        entries = list(root.iterdir())
        folders = [entry for entry in entries if entry.is_dir()]
        if len(folders) != 1 or any(entry.is_file() for entry in entries):
            return root
        inner = list(folders[0].iterdir())
        # A single class folder holds images; a wrapper holds only folders.
        if not inner or any(entry.is_file() for entry in inner):
            return root
        root = folders[0]


def class_indices(folders: Sequence[str], categories: Sequence[str]) -> tuple[dict[str, int], str]:
    """Model class index of each folder name, and which rule gave it (see the module's docstring)."""
    if all(name.isdigit() for name in folders):
        return {name: int(name) for name in folders}, "folder names are class indices"
    lookup = {category.lower().replace(" ", "_"): index for index, category in enumerate(categories)}
    if categories and all(name.lower().replace(" ", "_") in lookup for name in folders):
        return {name: lookup[name.lower().replace(" ", "_")] for name in folders}, "folder names are category names"
    return {name: index for index, name in enumerate(sorted(folders))}, "sorted folder names are class indices 0, 1, …"


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (any depth), sorted, by suffix."""
    return [path for path in sorted(Path(folder).rglob("*")) if path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES]


def read_images(files: Sequence[Path], transform: Callable, root: Path) -> Tensor:
    """The images of ``files`` transformed and stacked (N, C, H, W); DataError names an unreadable one."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                images.append(transform(image.convert("RGB")))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"{path.relative_to(root)} is not a readable image ({type(exc).__name__})") from exc
    try:
        return torch.stack(images)
    except RuntimeError as exc:
        raise DataError("the transformed images differ in size; the transform must crop to one size") from exc


def load_image_folder(
    root: str | os.PathLike,
    transform: Callable,
    *,
    categories: Sequence[str] = (),
    max_images: int = MAX_IMAGES,
    indices: tuple[dict[str, int], str] | None = None,
) -> EvalData:
    """Images of an extracted folder in ImageFolder layout (``root/class/image.png``), transformed and labelled.

    ``indices`` (folder name → class index, and the rule) fixes the labels when several folders
    must agree (a training and a validation folder); otherwise they come from ``root``'s folders.
    """
    root = Path(root)
    folders = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not folders:
        raise DataError("no class folders found: lay the zip out as CLASS/IMAGE.png (ImageFolder layout)")
    files = [(path, folder) for folder in folders for path in image_files(root / folder)]
    if not files:
        raise DataError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) in the class folders {', '.join(folders[:5])}")
    if len(files) > max_images:
        raise DataError(f"the zip holds {len(files)} images; at most {max_images} are accepted")
    lookup, rule = indices if indices is not None else class_indices(folders, categories)
    batch = read_images([path for path, _ in files], transform, root)
    labels = torch.tensor([lookup[folder] for _, folder in files], dtype=torch.int64)
    return EvalData(batch, labels, tuple(folders), f"{len(files)} images in {len(folders)} folders ({rule})")


def load_image_zip(
    source: str | os.PathLike | bytes,
    transform: Callable,
    *,
    categories: Sequence[str] = (),
    max_images: int = MAX_IMAGES,
) -> EvalData:
    """Images of a zip in ImageFolder layout (``class/image.png``), transformed and labelled.

    Args:
        source: the zip's path or bytes; extracted safely into a temporary folder, deleted after.
        transform: PIL image → tensor, e.g. :func:`image_transform` of the architecture.
        categories: the model's class names, so that folders may be named by category.
        max_images: refuse (DataError) zips with more images than this.

    Returns:
        EvalData whose ``classes`` are the folder names and ``source`` says which index rule applied.
    """
    with tempfile.TemporaryDirectory(prefix="fpgm-images-") as tmp:
        extract_zip(source, tmp)
        return load_image_folder(dataset_root(Path(tmp)), transform, categories=categories, max_images=max_images)


def _batch_size(images: Tensor) -> int:
    per_sample = max(1, images[0].numel()) if len(images) else 1
    return max(1, _BATCH_ELEMENTS // per_sample)


def predict(
    model: nn.Module,
    images: Tensor,
    *,
    batch_size: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Tensor:
    """The model's logits (float32, CPU) for ``images``, computed in eval mode without gradients.

    Runs on the device of the model's parameters. A model in training mode is evaluated in eval
    mode and put back. ``should_stop()`` is polled before each batch (EvaluationCancelled).
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batch_size = batch_size or _batch_size(images)
    was_training = model.training
    if was_training:
        model.eval()
    try:
        outputs = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                if should_stop is not None and should_stop():
                    raise EvaluationCancelled("evaluation stopped")
                # Per batch, so that long evaluations let other sessions' model work in between.
                with MODEL_LOCK.shared():
                    outputs.append(model(images[start : start + batch_size].to(device)).float().cpu())
        return torch.cat(outputs) if outputs else torch.empty(0, 0)
    finally:
        if was_training:
            model.train()


def compare_outputs(logits: Tensor, reference: Tensor, labels: Tensor | None = None) -> EvalResult:
    """Accuracy of ``logits`` against ``labels`` and fidelity to the unpruned model's ``reference``.

    ``agreement`` is the fraction of equal argmax predictions; ``kl`` the mean over images of
    KL(softmax(reference) ‖ softmax(logits)), 0 for identical outputs. Without labels, top1 is
    NaN and correct is 0.
    """
    if logits.shape != reference.shape:
        raise DataError(f"outputs of shape {tuple(logits.shape)} cannot be compared with {tuple(reference.shape)}")
    n = int(logits.shape[0])
    if n == 0:
        raise DataError("no images to evaluate on")
    if labels is not None and int(labels.max()) >= logits.shape[1]:
        raise DataError(
            f"class index {int(labels.max())} is out of range: the model has {logits.shape[1]} outputs "
            "(check the folder names: see the class-index rules)"
        )
    prediction = logits.argmax(dim=1)
    agreement = float((prediction == reference.argmax(dim=1)).double().mean())
    log_p = F.log_softmax(reference.double(), dim=1)
    log_q = F.log_softmax(logits.double(), dim=1)
    # KL(p ‖ q) per image, in float64; clamp the tiny negatives rounding leaves for equal outputs.
    kl = float((log_p.exp() * (log_p - log_q)).sum(dim=1).clamp(min=0).mean())
    correct = int((prediction == labels).sum()) if labels is not None else 0
    top1 = correct / n if labels is not None else float("nan")
    return EvalResult(top1=top1, agreement=agreement, kl=kl, n=n, correct=correct)


def evaluate_model(
    model: nn.Module,
    data: EvalData,
    *,
    reference: Tensor | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Top-1 and fidelity of ``model`` on ``data``; ``reference`` = the unpruned model's logits.

    Without ``reference`` the model is compared with itself (agreement 1, KL 0).
    """
    logits = predict(model, data.images, should_stop=should_stop)
    return compare_outputs(logits, logits if reference is None else reference, data.labels)


def evaluate_masks(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    data: EvalData,
    *,
    reference: Tensor | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Evaluate ``model`` with ``masks`` folded into a copy (``model`` is never modified).

    ``reference`` (the unpruned model's logits on ``data``) is computed when not given. Masks
    that prune nothing leave the outputs unchanged, so the reference is reused as is.
    """
    check_masks(model, masks)
    if reference is None:
        reference = predict(model, data.images, should_stop=should_stop)
    if all(bool(keep.all()) for keep in masks.values()):
        return compare_outputs(reference, reference, data.labels)
    logits = predict(apply_masks(model, masks), data.images, should_stop=should_stop)
    return compare_outputs(logits, reference, data.labels)
