"""Console sign-in over plain HTTP requests against real node processes: the session cookie's
attributes, the sign-in form's CSRF token, and `--insecure` (plain HTTP, still a token)."""

from __future__ import annotations

import http.client
import os
import re
import ssl
import urllib.parse
from http.cookies import SimpleCookie

from tests.support.job_calls import add_job
from tests.support.launcher import NodeFactory, NodeProcess


def connect(node: NodeProcess, secure: bool) -> http.client.HTTPConnection:
    port = int(str(node.info["http_port"]))
    if not secure:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)


def request(
    node: NodeProcess,
    method: str,
    path: str,
    secure: bool = True,
    form: dict[str, str] | None = None,
    cookie: str = "",
) -> tuple[int, dict[str, str], list[str], str]:
    """Status, headers, every Set-Cookie header and the body (redirects are not followed)."""
    conn = connect(node, secure)
    headers = {"Cookie": cookie} if cookie else {}
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    text = response.read().decode()
    cookies = response.headers.get_all("Set-Cookie") or []
    conn.close()
    return response.status, dict(response.headers), cookies, text


def sign_in(node: NodeProcess, token: str, secure: bool = True) -> tuple[int, list[str]]:
    status, _, cookies, text = request(node, "GET", "/signin", secure)
    assert status == 200
    match = re.search(r'name=csrf value="([^"]+)"', text)
    assert match
    signin_cookie = SimpleCookie(cookies[0])["jobmesh_signin"].value
    status, _, cookies, _ = request(
        node,
        "POST",
        "/signin",
        secure,
        form={"csrf": match.group(1), "token": token, "next": "/jobs"},
        cookie=f"jobmesh_signin={signin_cookie}",
    )
    return status, cookies


def test_a_page_needs_a_session_and_sign_in_sets_a_strict_http_only_secure_cookie(nodes: NodeFactory) -> None:
    node = nodes.start("auth")
    status, headers, _, _ = request(node, "GET", "/jobs")
    assert status == 303
    assert headers["Location"].startswith("/signin")
    token = (node.data_dir / "cluster" / "admin.token").read_text().strip()
    status, cookies = sign_in(node, token)
    assert status == 303
    session = next(c for c in cookies if c.startswith("jobmesh_session="))
    attributes = {part.strip().split("=")[0].lower() for part in session.split(";")}
    assert {"httponly", "secure", "samesite", "path"} <= attributes
    assert "SameSite=Strict" in session
    status, _, _, text = request(node, "GET", "/jobs", cookie=session.split(";")[0])
    assert status == 200
    assert "<h1>Jobs</h1>" in text


def test_sign_in_without_its_csrf_token_is_refused(nodes: NodeFactory) -> None:
    node = nodes.start("csrf")
    token = (node.data_dir / "cluster" / "admin.token").read_text().strip()
    status, _, cookies, _ = request(node, "POST", "/signin", form={"csrf": "guess", "token": token})
    assert status == 403
    assert not any(c.startswith("jobmesh_session=") for c in cookies)


def test_an_insecure_node_serves_plain_http_and_signs_in_with_its_console_token(nodes: NodeFactory) -> None:
    node = nodes.start("plain", extra_args=["--insecure"])
    assert request(node, "GET", "/healthz", secure=False)[0] == 200
    status, _ = sign_in(node, "not-the-token", secure=False)
    assert status == 401
    token = (node.data_dir / "console.token").read_text().strip()
    assert (node.data_dir / "console.token").stat().st_mode & 0o077 == 0
    status, cookies = sign_in(node, token, secure=False)
    assert status == 303
    session = next(c for c in cookies if c.startswith("jobmesh_session="))
    assert "Secure" not in session
    assert "HttpOnly" in session
    assert request(node, "GET", "/queues", secure=False, cookie=session.split(";")[0])[0] == 200


def test_a_payload_over_one_piece_downloads_whole_from_the_console(nodes: NodeFactory) -> None:
    # Given a signed-in session and a job with a 3 MiB payload (GetJob inlines at most 1 MiB)
    node = nodes.start("download")
    payload = os.urandom(3 * 1024 * 1024 + 7)
    job_id = add_job(node.stub, "nobody/consumes", payload)
    token = (node.data_dir / "cluster" / "admin.token").read_text().strip()
    _, cookies = sign_in(node, token)
    cookie = next(c for c in cookies if c.startswith("jobmesh_session=")).split(";")[0]

    def download(path: str) -> tuple[int, dict[str, str], bytes]:
        conn = connect(node, True)
        conn.request("GET", path, headers={"Cookie": cookie})
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response.status, dict(response.headers), body

    # When it downloads the payload, the bytes arrive whole, streamed from GetPayload
    status, headers, body = download(f"/jobs/{job_id}/payload")
    assert (status, headers["Content-Length"], body == payload) == (200, str(len(payload)), True)
    assert f'filename="{job_id}-payload.bin"' in headers["Content-Disposition"]
    # And a payload the job does not have is an error page, not an empty file
    status, _, body = download(f"/jobs/{job_id}/output")
    assert status == 404
    assert b"has no output payload" in body
