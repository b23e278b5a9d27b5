"""fpgm_core.models: every source behind one build_model — timm, your own factories, the dispatch and shapes.

timm models are real timm code (random init offline, weights from a Hugging Face cache laid out
as huggingface_hub lays it out, and from a local server speaking the Hub's protocol); factories
are real callables in tests/factory_models.py.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

import factory_models
import fpgm_core
from fpgm_core import ModelLoadError, build_model
from fpgm_core.models import arch_slug, parse_input_shape, source_kind
from fpgm_core.models.timm import timm_pretrained_cfg, timm_weights_cached

ROOT = Path(__file__).resolve().parents[1]
TIMM_ARCH = "timm:mobilenetv3_small_050"


@pytest.mark.parametrize(
    "arch,kind",
    [("demo", "demo"), ("resnet18", "torchvision"), ("timm:resnet50", "timm"), ("model.onnx", "onnx"),
     ("dir/My Model.ONNX", "onnx"), ("factory_models:small_net", "factory"), ("pkg.sub:Builders.small", "factory")],
)
def test_source_kind_reads_what_arch_names(arch, kind):
    assert source_kind(arch) == kind


def test_arch_slug_and_input_shapes():
    assert arch_slug("timm:resnet50") == "timm-resnet50"
    assert arch_slug("models/My Net.onnx") == "My-Net"
    assert arch_slug("pkg.mod:build") == "pkg.mod-build"
    assert parse_input_shape("3x32x32") == (1, 3, 32, 32)
    assert parse_input_shape("2, 3, 8, 8") == (2, 3, 8, 8)
    for bad in ("a,b", "0,3,8,8", "7", ""):
        with pytest.raises(ModelLoadError, match="input shape"):
            parse_input_shape(bad)


# --- timm ------------------------------------------------------------------------------------


def test_timm_random_init_is_seeded_and_shaped_by_its_pretrained_cfg():
    import timm

    a, b = build_model(TIMM_ARCH, "none"), build_model(TIMM_ARCH, "none")
    assert a.arch == TIMM_ARCH and a.weights == "none"
    assert a.input_shape == (1, *timm_pretrained_cfg(TIMM_ARCH)["input_size"]) == (1, 3, 224, 224)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert not a.model.training
    layers = fpgm_core.prunable_layers(a.model)
    assert len(layers) > 40 and layers[-1].name == "classifier" and layers[-1].is_output
    # timm's own BatchNorm subclass is there: the architecture is timm's, not a look-alike.
    assert any(type(m).__name__ == "BatchNormAct2d" for m in a.model.modules())
    assert isinstance(a.model, timm.models.MobileNetV3)


def test_timm_input_shape_follows_the_config_of_non_224_models():
    assert build_model("timm:inception_v3", "none").input_shape == (1, 3, 299, 299)


def test_unknown_timm_name_suggests_close_ones():
    with pytest.raises(ModelLoadError, match=r"unknown timm architecture 'resnet5O'.*resnet50"):
        build_model("timm:resnet5O")


def test_state_dict_loads_into_a_timm_architecture(tmp_path):
    state = build_model(TIMM_ARCH, "none").model.state_dict()
    changed = {k: v * 3 if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "mine.safetensors"
    path.write_bytes(save_safetensors(changed))
    loaded = build_model(TIMM_ARCH, path)
    assert loaded.weights == "mine.safetensors"
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in changed.items())
    with pytest.raises(ModelLoadError, match="do not fit this architecture"):
        build_model("timm:resnet18", path)


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again on exit: connecting is refused


def test_timm_pretrained_offline_fails_fast_with_a_clear_message(empty_hf_cache, monkeypatch):
    # An unreachable hub (here a closed local port, so the test is the same with or without internet):
    # the probe fails in seconds, not after Hugging Face's minute of retries.
    from huggingface_hub import constants

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match=rf"not in the local Hugging Face cache and {endpoint} cannot be reached.*--weights none"):
        build_model(TIMM_ARCH, "default")
    assert time.monotonic() - started < 20
    fallback = build_model(TIMM_ARCH, "default", allow_random_fallback=True)
    assert fallback.weights == "none" and "random initialisation" in fallback.notice


def test_timm_pretrained_offline_mode_is_respected(empty_hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set"):
        build_model(TIMM_ARCH, "default")


def _cache_file(cache: Path, repo: str, filename: str, data: bytes) -> Path:
    """Lay out one file as huggingface_hub's cache does: refs/main → snapshots/<commit>/<file>."""
    commit = hashlib.sha1(data).hexdigest()
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    target = folder / "snapshots" / commit / filename
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    return target


def _pretrained_like_weights() -> dict[str, torch.Tensor]:
    state = build_model(TIMM_ARCH, "none").model.state_dict()
    generator = torch.Generator().manual_seed(7)
    return {k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v for k, v in state.items()}


def test_timm_pretrained_weights_come_from_the_local_cache_without_network(empty_hf_cache):
    weights = _pretrained_like_weights()
    repo = timm_pretrained_cfg(TIMM_ARCH)["hf_hub_id"]
    assert not timm_weights_cached(TIMM_ARCH)
    _cache_file(empty_hf_cache, repo, "model.safetensors", save_safetensors(weights))
    assert timm_weights_cached(TIMM_ARCH)
    loaded = build_model(TIMM_ARCH, "default")  # offline: only the cache can have given these
    assert loaded.weights == "default" and loaded.notice is None
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in weights.items())


class _HubHandler(http.server.BaseHTTPRequestHandler):
    """Serves one file as the Hugging Face Hub does (HEAD with commit and ETag, GET with the bytes)."""

    files: dict[str, bytes] = {}

    def _headers(self, data: bytes) -> None:
        self.send_header("X-Repo-Commit", hashlib.sha1(data).hexdigest())
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        data = self.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        self.send_response(200)
        self._headers(data)

    def do_GET(self):  # noqa: N802
        data = self.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self._headers(data)
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_timm_pretrained_download_reports_progress_and_fills_the_cache(tmp_path):
    """A real hf_hub_download from a local server speaking the Hub's protocol, in a fresh process."""
    weights = _pretrained_like_weights()
    data = save_safetensors(weights)
    repo = timm_pretrained_cfg(TIMM_ARCH)["hf_hub_id"]
    _HubHandler.files = {f"/{repo}/resolve/main/model.safetensors": data}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = (
        "import json, sys, torch\n"
        "from fpgm_core import build_model\n"
        "from fpgm_core.models.timm import download_timm_weights\n"
        "seen = []\n"
        f"path = download_timm_weights({TIMM_ARCH!r}, lambda done, total: seen.append((done, total)))\n"
        f"loaded = build_model({TIMM_ARCH!r}, 'default')\n"
        "print(json.dumps({'path': str(path), 'seen': seen, 'sum': float(sum(v.double().sum() for v in loaded.model.state_dict().values() if v.is_floating_point()))}))\n"
    )
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_TELEMETRY": "1"}
    try:
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["path"]).read_bytes() == data and str(tmp_path / "hub") in report["path"]
    assert report["seen"] and report["seen"][-1] == [len(data), len(data)]
    assert [done for done, _ in report["seen"]] == sorted(done for done, _ in report["seen"])
    expected = float(sum(v.double().sum() for v in weights.values() if v.is_floating_point()))
    assert report["sum"] == pytest.approx(expected, rel=1e-12)


# --- your own code --------------------------------------------------------------------------


def test_factory_builds_seeded_with_its_declared_input_shape():
    calls = len(factory_models.CALLS)
    a = build_model("factory_models:small_net")
    b = build_model("factory_models:Builders.small", "default")
    assert len(factory_models.CALLS) == calls + 2
    assert isinstance(a.model, factory_models.SmallNet) and not a.model.training
    assert a.arch == "factory_models:small_net" and a.input_shape == (1, 3, 16, 16)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert [layer.name for layer in fpgm_core.prunable_layers(a.model)] == ["features.0", "features.3", "head.2"]


def test_factory_input_shape_given_wins_and_is_required_when_undeclared():
    assert build_model("factory_models:small_net", input_shape="1,3,32,32").input_shape == (1, 3, 32, 32)
    with pytest.raises(ModelLoadError, match="declares no input shape.*--input-shape"):
        build_model("factory_models:no_shape")
    assert build_model("factory_models:no_shape", input_shape=(1, 3, 8, 8)).input_shape == (1, 3, 8, 8)


def test_factory_weights_file_loads_strictly(tmp_path):
    state = {k: v + 1 if v.is_floating_point() else v for k, v in build_model("factory_models:small_net").model.state_dict().items()}
    path = tmp_path / "mine.pt"
    torch.save(state, path)
    loaded = build_model("factory_models:small_net", path)
    assert loaded.weights == "mine.pt"
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize(
    "spec,message",
    [
        ("no_such_module_here:build", "cannot import 'no_such_module_here'"),
        ("factory_models:missing", "has no attribute 'missing'"),
        ("factory_models:CALLS", "is not callable"),
        ("factory_models:not_a_module", "returned int, not a torch.nn.Module"),
        ("factory_models:raises", "raised RuntimeError: the weights server is down"),
    ],
)
def test_factory_failures_are_named(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        build_model(spec)
