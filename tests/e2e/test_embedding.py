"""Only the registered EHRs may frame the viewer: the browser itself refuses any other parent page."""

from __future__ import annotations

import threading

from playwright.sync_api import Page
from werkzeug.serving import make_server
from werkzeug.wrappers import Response


def test_an_unregistered_site_cannot_frame_the_viewer(page: Page, sandbox, artifacts):
    def app(environ, start_response):
        html = f'<!doctype html><title>Not an EHR</title><iframe id="v" src="{sandbox.viewer_url}/"></iframe>'
        return Response(html, mimetype="text/html")(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    messages: list[str] = []
    page.on("console", lambda msg: messages.append(msg.text))
    try:
        # `localhost` is another origin than the registered EHR's `127.0.0.1:<port>`.
        with page.expect_response(lambda r: r.url.startswith(sandbox.viewer_url)) as viewer_response:
            page.goto(f"http://localhost:{server.server_port}/")
        assert "frame-ancestors" in viewer_response.value.headers["content-security-policy"]
        page.wait_for_timeout(500)
        frame = next(f for f in page.frames if f != page.main_frame)
        assert "Shared Care Record" not in frame.content()
        assert any("frame-ancestors" in m for m in messages), messages
        page.screenshot(path=str(artifacts / "framing-refused.png"))
    finally:
        server.shutdown()
