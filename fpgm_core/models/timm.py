"""The timm source: ``timm:NAME`` for any of timm's ~1300 architectures.

* ``none`` builds the architecture with a random init seeded 0 (offline, reproducible).
* ``default`` loads its pretrained weights through timm and Hugging Face's own machinery: the file
  timm's ``pretrained_cfg`` names (``model.safetensors`` of the ``hf_hub_id`` repository, else
  ``pytorch_model.bin``; a few older models use a plain URL) is taken from the local Hugging Face
  cache when present, otherwise downloaded by ``huggingface_hub.hf_hub_download`` (its progress bar
  on the terminal, or a ``progress`` callback), then loaded by timm itself, weights only, so timm's
  per-model key remapping applies. Offline, one quick connection probe fails with a clear message
  instead of Hugging Face's minute of retries.
* A state_dict file loads strictly into the architecture.

The input shape comes from the model's ``pretrained_cfg`` (``input_size``); evaluation transforms
and class names do too (:func:`timm_transform`, :func:`timm_categories`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from ..errors import ModelLoadError
from .checkpoints import load_weights, read_state_dict
from .loaded import LoadedModel, seeded_init

__all__ = [
    "TIMM_PREFIX",
    "timm_architectures",
    "timm_name",
    "timm_pretrained_cfg",
    "timm_input_shape",
    "timm_weights_cached",
    "download_timm_weights",
    "build_timm",
    "timm_transform",
    "timm_categories",
]

TIMM_PREFIX = "timm:"
_HF_FILES = ("model.safetensors", "pytorch_model.bin")
# How long the offline probe waits for huggingface.co before saying there is no connection.
_PROBE_TIMEOUT_S = 5.0

Progress = Callable[[int, "int | None"], None]


def timm_architectures(pattern: str = "") -> list[str]:
    """timm's architecture names (``resnet50``, ``efficientnet_b0``, …), optionally filtered by a wildcard."""
    import timm

    return list(timm.list_models(pattern or ""))


def timm_name(arch: str) -> str:
    """``timm:NAME`` → ``NAME``; ModelLoadError naming the problem for an unknown name."""
    import timm

    name = arch[len(TIMM_PREFIX):] if arch.startswith(TIMM_PREFIX) else arch
    base = name.split(".", 1)[0]  # "resnet50.a1_in1k": the architecture and one pretrained tag
    if not name or not timm.is_model(base):
        import difflib

        close = difflib.get_close_matches(base, timm.list_models(), n=5) if base else []
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ModelLoadError(
            f"unknown timm architecture {name!r}{hint}: `python -m fpgm_core archs --timm PATTERN` lists them"
        )
    return name


def timm_pretrained_cfg(arch: str) -> dict[str, Any]:
    """The ``pretrained_cfg`` of ``timm:NAME`` (input size, mean/std, crop, hub id) as a dict."""
    from timm.models import get_pretrained_cfg

    name = timm_name(arch)
    cfg = get_pretrained_cfg(name, allow_unregistered=True)
    return cfg.to_dict() if cfg is not None else {}


def _input_shape_of(cfg: dict[str, Any]) -> tuple[int, ...]:
    size = tuple(int(d) for d in cfg.get("input_size") or (3, 224, 224))
    return (1, *size)


def timm_input_shape(arch: str) -> tuple[int, ...]:
    """The input ``timm:NAME`` expects, batch 1, from its ``pretrained_cfg``."""
    return _input_shape_of(timm_pretrained_cfg(arch))


def _weights_location(arch: str) -> tuple[str, str, tuple[str, ...]]:
    """("hf-hub", repo, files to try) or ("url", url, ()) for the pretrained weights of ``arch``."""
    cfg = timm_pretrained_cfg(arch)
    if cfg.get("hf_hub_id"):
        filename = cfg.get("hf_hub_filename")
        return "hf-hub", cfg["hf_hub_id"], (filename,) if filename else _HF_FILES
    if cfg.get("url"):
        return "url", cfg["url"], ()
    raise ModelLoadError(f"timm has no pretrained weights for {timm_name(arch)!r}: use --weights none or a state_dict file")


def _cached_file(arch: str) -> Path | None:
    kind, where, files = _weights_location(arch)
    if kind == "hf-hub":
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = where.partition("@")
        for filename in files:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
        return None
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(where).path)
    return path if path.is_file() else None


def timm_weights_cached(arch: str) -> bool:
    """True when the pretrained weights of ``timm:NAME`` are already in the local cache."""
    try:
        return _cached_file(arch) is not None
    except ModelLoadError:
        return False


def _probe(url: str) -> None:
    """Fail fast, naming the cause, when the host of ``url`` cannot be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise OSError("HF_HUB_OFFLINE is set")
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    with socket.create_connection((parsed.hostname, port), timeout=_PROBE_TIMEOUT_S):
        pass


def _progress_tqdm(progress: Progress):
    """A tqdm class that reports byte progress to ``progress(done, total)`` instead of a terminal."""
    from tqdm.auto import tqdm

    class ProgressTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True  # no terminal output; counts still kept below
            super().__init__(*args, **kwargs)
            self._done = 0

        def update(self, n=1):
            self._done += n or 0
            progress(self._done, int(self.total) if self.total else None)

    return ProgressTqdm


def download_timm_weights(arch: str, progress: Progress | None = None) -> Path:
    """The local file of ``timm:NAME``'s pretrained weights: from the cache, else downloaded.

    Hugging Face weights are downloaded by ``hf_hub_download`` into its cache (a terminal progress
    bar, or ``progress(done_bytes, total_bytes_or_None)`` after each chunk); URL weights by torch
    hub into its cache. Raises ModelLoadError with the cause when offline.
    """
    cached = _cached_file(arch)
    if cached is not None:
        return cached
    kind, where, files = _weights_location(arch)
    name = timm_name(arch)
    if kind == "hf-hub":
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            _probe(constants.ENDPOINT)
        except OSError as exc:
            raise ModelLoadError(
                f"pretrained weights for timm:{name} are not in the local Hugging Face cache and "
                f"{constants.ENDPOINT} cannot be reached ({exc}); use --weights none (random init) or a "
                "local state_dict file"
            ) from exc
        repo, _, revision = where.partition("@")
        last: Exception | None = None
        for filename in files:
            try:
                path = hf_hub_download(repo, filename, revision=revision or None,
                                       tqdm_class=_progress_tqdm(progress) if progress else None)
                return Path(path)
            except EntryNotFoundError as exc:  # the repository has the other file format
                last = exc
            except Exception as exc:  # network, HTTP and disk errors of huggingface_hub
                raise ModelLoadError(f"could not download pretrained weights for timm:{name} from {repo}: {exc}") from exc
        raise ModelLoadError(f"the Hugging Face repository {repo} has none of {', '.join(files)}") from last
    import torch

    try:
        _probe(where)
        target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(where).path)
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(where, str(target), progress=progress is None)
        return target
    except OSError as exc:
        raise ModelLoadError(
            f"pretrained weights for timm:{name} are not cached and could not be downloaded from {where} ({exc}); "
            "use --weights none (random init) or a local state_dict file"
        ) from exc


def build_timm(arch: str, weights: str | os.PathLike = "none", *, allow_random_fallback: bool = False,
               progress: Progress | None = None) -> LoadedModel:
    """``timm:NAME`` in eval mode: ``none`` (random init, seed 0), ``default`` (pretrained) or a state_dict file.

    ``allow_random_fallback``: when pretrained weights cannot be had, return a random init with a
    notice instead of raising.
    """
    import timm

    name = timm_name(arch)
    weights = str(weights)
    notice = None
    model = None
    if weights == "default":
        try:
            path = download_timm_weights(arch, progress)
            # timm loads the file itself (weights only), applying its per-model checkpoint filters.
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        except ModelLoadError as exc:
            if not allow_random_fallback:
                raise
            notice = f"{exc}; using random initialisation (seeded, reproducible) instead"
        except Exception as exc:  # a corrupt or mismatched cached file
            raise ModelLoadError(f"pretrained weights for timm:{name} could not be loaded: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if model is None:
        with seeded_init():
            try:
                model = timm.create_model(name, pretrained=False)
            except Exception as exc:  # a timm builder that fails on its own defaults
                raise ModelLoadError(f"timm could not build {name}: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if weights not in ("none", "default"):
        load_weights(model, read_state_dict(weights))
    cfg = getattr(model, "pretrained_cfg", None) or timm_pretrained_cfg(arch)
    label = weights if weights in ("none", "default") else Path(weights).name
    if notice is not None:
        label = "none"
    return LoadedModel(model.eval(), f"{TIMM_PREFIX}{name}", label, _input_shape_of(dict(cfg)), notice)


def timm_transform(arch: str | None = None, *, model: Any = None) -> Callable:
    """The evaluation transform (resize, centre crop, normalise) of a timm model's ``pretrained_cfg``."""
    from timm.data import create_transform, resolve_data_config

    if model is not None:
        config = resolve_data_config(model=model)
    else:
        config = resolve_data_config(pretrained_cfg=timm_pretrained_cfg(arch))
    return create_transform(**config)


def timm_categories(arch: str | None = None, *, model: Any = None) -> tuple[str, ...]:
    """Class names of a timm model (ImageNet-1k/22k descriptions such as ``tench``), or () when unknown."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    cfg = dict(getattr(model, "pretrained_cfg", None) or {}) if model is not None else timm_pretrained_cfg(arch)
    names = cfg.get("label_names")
    if names:
        return tuple(str(n) for n in names)
    subset = infer_imagenet_subset(cfg)
    if not subset:
        return ()
    info = ImageNetInfo(subset)
    # The first name of each description ("tench, Tinca tinca" → "tench"), as torchvision's categories.
    return tuple(info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes()))
