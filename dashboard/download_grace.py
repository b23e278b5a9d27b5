"""A grace period for files that download buttons build on click (Streamlit's deferred downloads).

Why: when a deferred download is clicked, Streamlit builds the file, stores it *unreferenced by any
session* and sends the browser its URL; the browser then fetches it. Meanwhile every script run of
*any* session that finishes sweeps unreferenced files (the first sweep marks a download, the next
deletes it). With several sessions busy — a class on one server — two sweeps fit between building
the file and the browser's fetch, and the user gets a 404 and a cancelled download (seen 4 times in
8 in the load test, ``tests/test_load.py``). Streamlit 1.67 has no setting for this, so the sweep is
told to leave such files alone for :data:`GRACE_S` seconds; after that the normal sweep removes them.
"""

from __future__ import annotations

import threading
import time

from streamlit.runtime.media_file_manager import MediaFileManager

__all__ = ["GRACE_S", "install"]

# Long enough for a browser on a slow link to start fetching a built file; a built file lives at
# most this long beyond its fetch, so memory stays bounded by what users click in that time.
GRACE_S = 120.0

_built_at: dict[str, float] = {}
_guard = threading.Lock()


def _file_id(url: str) -> str:
    """The storage id in a media URL such as ``/media/<id>.bin``."""
    return url.rsplit("/", 1)[-1].split(".", 1)[0]


def install() -> None:
    """Patch MediaFileManager once per process (idempotent): clicked files outlive the sweep for GRACE_S."""
    if "_fpgm_unpatched" in vars(MediaFileManager):
        return
    execute_deferred, delete_file = MediaFileManager.execute_deferred, MediaFileManager._delete_file

    def execute_deferred_with_grace(self: MediaFileManager, file_id: str) -> str:
        url = execute_deferred(self, file_id)
        with _guard:
            _built_at[_file_id(url)] = time.monotonic()
        return url

    def delete_file_after_grace(self: MediaFileManager, file_id: str) -> None:
        with _guard:
            built = _built_at.get(file_id)
            if built is not None and time.monotonic() - built < GRACE_S:
                return  # a later sweep deletes it
            _built_at.pop(file_id, None)
        delete_file(self, file_id)

    MediaFileManager.execute_deferred = execute_deferred_with_grace
    MediaFileManager._delete_file = delete_file_after_grace
    # Also the mark that the patch is in: Streamlit's own methods, kept for tests.
    MediaFileManager._fpgm_unpatched = (execute_deferred, delete_file)
