"""Pretrained weights: are they in the local cache, and fetch them with progress.

torchvision's own loader downloads silently; the dashboard wants a progress bar and a fast,
visible failure offline, so the download is done here, in chunks, into the same cache file
torchvision reads (``torch.hub.get_dir()/checkpoints/<file>``), written atomically and checked
against the hash prefix in the file name as ``torch.hub`` does.

timm weights come through Hugging Face's own download (``fpgm_core.models.timm``), which reports
its progress to the page's bar; here is only the page's view of it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch

from fpgm_core import ModelLoadError

__all__ = [
    "pretrained_url",
    "pretrained_path",
    "pretrained_available",
    "download_pretrained",
    "timm_pretrained_available",
    "download_timm_pretrained",
]

_CHUNK = 1 << 20
# torch.hub's rule: a file named name-<hex>.ext carries the first hex digits of its SHA-256.
_HASH_PREFIX = re.compile(r"-([a-f0-9]*)\.")


def pretrained_url(arch: str) -> str:
    """URL of torchvision's default weights for ``arch``; ModelLoadError when it has none."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(arch).DEFAULT.url
    except Exception as exc:  # unknown names raise ValueError, weightless models AttributeError
        raise ModelLoadError(f"torchvision has no pretrained weights for {arch!r}") from exc


def pretrained_path(arch: str) -> Path:
    """Where torchvision looks for (and caches) the default weights of ``arch``."""
    name = os.path.basename(urlparse(pretrained_url(arch)).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def pretrained_available(arch: str) -> bool:
    """True when the default weights of ``arch`` are already in the local cache."""
    try:
        return pretrained_path(arch).is_file()
    except ModelLoadError:
        return False


def download_pretrained(
    arch: str, progress: Callable[[int, int | None], None] | None = None, *, timeout: float = 10.0
) -> Path:
    """Download the default weights of ``arch`` into the torch hub cache and return the path.

    ``progress(done_bytes, total_bytes_or_None)`` is called after each chunk. Raises
    ModelLoadError quickly when offline (connection errors surface within ``timeout`` seconds),
    and leaves no partial file behind.
    """
    url = pretrained_url(arch)
    target = pretrained_path(arch)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    temp = Path(temp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        match = _HASH_PREFIX.search(target.name)
        if match and not digest.hexdigest().startswith(match.group(1)):
            raise ModelLoadError(f"the download of {target.name} is corrupt (SHA-256 does not match its name)")
        os.replace(temp, target)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelLoadError(f"could not download pretrained weights for {arch} from {url}: {reason}") from exc
    finally:
        temp.unlink(missing_ok=True)
    return target


def timm_pretrained_available(arch: str) -> bool:
    """True when the pretrained weights of ``timm:NAME`` are already in the local cache."""
    from fpgm_core.models.timm import timm_weights_cached

    return timm_weights_cached(arch)


def download_timm_pretrained(arch: str, progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Fetch ``timm:NAME``'s pretrained weights into the Hugging Face cache (``progress(done, total)``).

    Raises ModelLoadError with the cause when they cannot be had (offline within seconds).
    """
    from fpgm_core.models.timm import download_timm_weights

    return download_timm_weights(arch, progress)
