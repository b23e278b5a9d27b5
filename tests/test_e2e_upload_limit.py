"""A file over the upload limit, in a real browser and from a client that skips the browser's checks.

The limit is the project's ``.streamlit/config.toml`` (``server.maxUploadSize``), read by the real
server. The browser refuses the file before sending it; a client that sends it anyway is refused by
the server (413), as is one without the session's XSRF token (403). The session keeps its model and
can still load a proper file afterwards.
"""

from __future__ import annotations

import http.client
import tomllib
import urllib.parse
import uuid

from safetensors.torch import save_file

from load_sessions import ROOT, session_weights
from test_e2e_browser import TIMEOUT_MS, idle

LIMIT_MB = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"]


def _put_status(url: str, headers: dict[str, str], declared_bytes: int) -> int:
    """Status of a PUT that declares ``declared_bytes`` of body; the server answers from the headers."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("PUT", parts.path)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("Content-Type", "application/octet-stream")
        connection.putheader("Content-Length", str(declared_bytes))
        connection.endheaders(b"\0" * 4096)
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_file_over_the_upload_limit_is_refused_and_the_session_goes_on(browser, streamlit_server, tmp_path):
    assert LIMIT_MB == 200
    big = tmp_path / "big.safetensors"
    with big.open("wb") as out:
        out.truncate((LIMIT_MB + 1) * 2**20)  # sparse: no disk or memory spent
    small = tmp_path / "small.safetensors"
    save_file(session_weights(42), str(small))

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        uploads: list[tuple[str, dict[str, str]]] = []
        page.on("request", lambda request: "/upload_file/" in request.url and request.method == "PUT"
                and uploads.append((request.url, request.all_headers())))
        page.goto(f"{streamlit_server}/model")
        idle(page)
        page.get_by_text("Upload a file", exact=True).click()
        idle(page)
        dropzone = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
        load = page.get_by_role("button", name="Load the uploaded weights")

        dropzone.set_input_files(str(big))
        uploader = page.locator('[data-testid="stFileUploader"]')
        uploader.get_by_text(f"File must be {LIMIT_MB:.1f}MB or smaller.").wait_for()
        page.wait_for_timeout(500)
        assert not uploads, "the browser sent a file over the limit"
        assert load.is_disabled()
        assert page.locator('[data-testid="stSidebar"]').get_by_text("demo digits CNN · bundled weights").is_visible()

        # A proper file goes through; its request shows where a hostile client would send the big one.
        dropzone.set_input_files(str(small))
        page.wait_for_function("() => !document.querySelector('[data-testid=\"stBaseButton-primary\"]')?.disabled")
        assert len(uploads) == 1
        url, headers = uploads[0]
        session_url = url.rsplit("/", 1)[0] + f"/{uuid.uuid4()}"
        credentials = {name: headers[name] for name in ("cookie", "x-xsrftoken") if name in headers}
        assert "x-xsrftoken" in credentials, headers
        assert _put_status(session_url, credentials, (LIMIT_MB + 1) * 2**20) == 413
        assert _put_status(session_url, {"cookie": credentials.get("cookie", "")}, 1024) == 403  # no XSRF token

        idle(page)
        load.click()
        page.locator('[data-testid="stAlertContentSuccess"]', has_text="Loaded small.safetensors").wait_for()
        idle(page)
        assert page.locator('[data-testid="stSidebar"]').get_by_text("demo · uploaded small.safetensors").is_visible()
        assert page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]').count() == 0
    finally:
        context.close()
