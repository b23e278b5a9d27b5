"""dashboard.download_grace: a file built on click survives other sessions' sweeps until fetched."""

from __future__ import annotations

from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

from dashboard import download_grace


def _manager_with_a_clicked_file() -> tuple[MediaFileManager, str]:
    manager = MediaFileManager(MemoryMediaFileStorage("/media"))
    placeholder = manager.add_deferred(lambda: b"weights", "application/octet-stream", "coords", file_name="m.safetensors")
    url = manager.execute_deferred(placeholder)
    return manager, url.rsplit("/", 1)[-1].split(".")[0]


def _unpatched(monkeypatch) -> None:
    """Streamlit's own methods for this test, whether or not an app run installed the patch."""
    execute_deferred, delete_file = getattr(
        MediaFileManager, "_fpgm_unpatched", (MediaFileManager.execute_deferred, MediaFileManager._delete_file)
    )
    monkeypatch.setattr(MediaFileManager, "execute_deferred", execute_deferred)
    monkeypatch.setattr(MediaFileManager, "_delete_file", delete_file)
    monkeypatch.delattr(MediaFileManager, "_fpgm_unpatched", raising=False)


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
