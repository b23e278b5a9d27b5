"""dashboard/uploads.py: zip archives (TorchScript, .pt2, zipped state_dicts) are read within bounds."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from dashboard import uploads
from fpgm_core import ModelLoadError


def torchscript_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), buffer)
    return buffer.getvalue()


def deflated_bomb(archive_bytes: bytes, inflated: int) -> bytes:
    """The archive with its first tensor payload replaced by ``inflated`` zero bytes, deflated.

    The payload is what the reader inflates into memory; zeros deflate ~1000:1, so the file stays small.
    """
    source = zipfile.ZipFile(io.BytesIO(archive_bytes))
    payload = next(name for name in source.namelist() if "/data/" in name and not name.endswith(".pkl"))
    target = io.BytesIO()
    with zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            if info.filename != payload:
                out.writestr(info, source.read(info.filename))
                continue
            entry = zipfile.ZipInfo(info.filename)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with out.open(entry, "w", force_zip64=True) as member:
                block = bytes(1 << 20)
                for _ in range(inflated >> 20):
                    member.write(block)
    return target.getvalue()


def test_a_deflate_bomb_in_a_torchscript_upload_is_refused_without_inflating_it(monkeypatch):
    monkeypatch.setattr(uploads, "MAX_INFLATED_BYTES", 16 << 20)  # the real bound is 1 GiB; same code path
    bomb = deflated_bomb(torchscript_bytes(), 256 << 20)
    assert len(bomb) < 1 << 20  # a quarter of a GB in under a MB
    inflated = []
    original_read = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        data = original_read(self, n)
        inflated.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    with pytest.raises(ModelLoadError, match="inflates to more than 16 MB"):
        uploads.read_upload(bomb, "bomb.pt")
    assert sum(inflated) <= (16 << 20) + (2 << 20)  # stopped one chunk past the bound


def test_a_deflate_bomb_in_a_pt2_upload_is_refused(monkeypatch):
    monkeypatch.setattr(uploads, "MAX_INFLATED_BYTES", 16 << 20)
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),)), buffer)
    with pytest.raises(ModelLoadError, match="inflates to more than 16 MB"):
        uploads.read_upload(deflated_bomb(buffer.getvalue(), 64 << 20), "bomb.pt2")


def test_an_archive_with_too_many_entries_is_refused():
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("m/constants.pkl", b"")
        for index in range(uploads.MAX_ARCHIVE_ENTRIES):
            archive.writestr(f"m/data/{index}", b"")
    with pytest.raises(ModelLoadError, match="20,001 entries; at most 20,000"):
        uploads.read_upload(data.getvalue(), "many.pt")


def test_archives_within_the_bounds_still_load():
    weights = uploads.read_upload(torchscript_bytes(), "linear.pt")
    assert weights.format == "torchscript" and set(weights.state) == {"weight", "bias"}
    compressed = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(torchscript_bytes())) as source, zipfile.ZipFile(compressed, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            out.writestr(info.filename, source.read(info.filename))
    assert set(uploads.read_upload(compressed.getvalue(), "deflated.pt").state) == {"weight", "bias"}
