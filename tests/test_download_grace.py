"""dashboard.download_grace: a file built on click survives other sessions' sweeps until fetched."""

from __future__ import annotations

import pytest
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

from dashboard import download_grace


def _manager_with_a_clicked_file() -> tuple[MediaFileManager, str]:
    manager = MediaFileManager(MemoryMediaFileStorage("/media"))
    placeholder = manager.add_deferred(lambda: b"weights", "application/octet-stream", "coords", file_name="m.safetensors")
    url = manager.execute_deferred(placeholder)
    return manager, url.rsplit("/", 1)[-1].split(".")[0]


PATCHED = ("execute_deferred", "_delete_file", "_fpgm_unpatched")


def _unpatched(monkeypatch) -> None:
    """Streamlit's own methods for this test, whether or not an app run installed the patch; at the
    end of the test all three attributes are as they were (the mark too, set or not)."""
    execute_deferred, delete_file = getattr(
        MediaFileManager, "_fpgm_unpatched", (MediaFileManager.execute_deferred, MediaFileManager._delete_file)
    )
    monkeypatch.setattr(MediaFileManager, "execute_deferred", execute_deferred)
    monkeypatch.setattr(MediaFileManager, "_delete_file", delete_file)
    # Recorded even where absent, so that a mark install() leaves behind is removed afterwards:
    # a stale mark tells a later install() that the (restored, unpatched) methods are patched.
    monkeypatch.setattr(MediaFileManager, "_fpgm_unpatched", None, raising=False)
    monkeypatch.delattr(MediaFileManager, "_fpgm_unpatched")


def test_unpatched_streamlit_deletes_a_clicked_file_after_two_sweeps(monkeypatch):
    # The race the patch is for: two sessions finishing runs before the browser fetches the file.
    _unpatched(monkeypatch)
    manager, file_id = _manager_with_a_clicked_file()
    manager.remove_orphaned_files()
    manager.remove_orphaned_files()
    assert manager.read_file(file_id) is None


def test_clicked_file_outlives_sweeps_within_the_grace_period_then_goes(monkeypatch):
    _unpatched(monkeypatch)
    download_grace.install()
    download_grace.install()  # idempotent: one patch, not two wrappers
    manager, file_id = _manager_with_a_clicked_file()
    for _ in range(5):
        manager.remove_orphaned_files()
    assert manager.read_file(file_id).content == b"weights"
    monkeypatch.setattr(download_grace, "GRACE_S", 0.0)
    manager.remove_orphaned_files()
    manager.remove_orphaned_files()
    assert manager.read_file(file_id) is None


def test_the_grace_tests_leave_the_media_file_manager_as_they_found_it():
    # Whether install() works later in the session must not depend on these tests having run: a
    # mark left behind made a later install() skip the patch over Streamlit's restored methods.
    with pytest.MonkeyPatch.context() as outer:
        _unpatched(outer)  # Streamlit's own methods and no mark, whatever ran before
        before = {name: vars(MediaFileManager).get(name) for name in PATCHED}
        with pytest.MonkeyPatch.context() as monkeypatch:
            test_clicked_file_outlives_sweeps_within_the_grace_period_then_goes(monkeypatch)
        assert {name: vars(MediaFileManager).get(name) for name in PATCHED} == before
