"""Where models come from: one module per source, one :func:`build_model` for all.

* :mod:`.demo` — the bundled digits CNN;
* :mod:`.torchvision` — torchvision's classifiers;
* :mod:`.timm` — ``timm:NAME``, random or pretrained through Hugging Face;
* :mod:`.onnx` — ``.onnx`` files, converted with onnx2torch or viewed through their initializers;
* :mod:`.factory` — ``package.module:callable``, your own code (trusted: you named it);
* :mod:`.checkpoints` — reading state_dicts without running code, strict loading;
* :mod:`.loaded` — :class:`LoadedModel`, what every source returns.
"""

from .build import SOURCE_KINDS, build_model, source_kind
from .checkpoints import CHECKPOINT_SUFFIXES, check_finite, load_weights, read_state_dict, state_dict_mismatch
from .loaded import LoadedModel, arch_slug, parse_input_shape, seeded_init
from .torchvision import classification_architectures

__all__ = [
    "SOURCE_KINDS",
    "CHECKPOINT_SUFFIXES",
    "LoadedModel",
    "build_model",
    "source_kind",
    "classification_architectures",
    "read_state_dict",
    "check_finite",
    "load_weights",
    "state_dict_mismatch",
    "arch_slug",
    "parse_input_shape",
    "seeded_init",
]
