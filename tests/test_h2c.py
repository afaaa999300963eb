"""HTTP/2 requests a client leaves cannot hang a stop (the API speaks HTTP/1.1 only).

hypercorn switched a connection to HTTP/2 on an ``Upgrade: h2c`` request without a body or
on the HTTP/2 preface; a client that then half-closed before its first answer was sent left
that answer's (shielded) send waiting forever, and SIGTERM never stopped the process. Now
the upgrade is ignored (answered in HTTP/1.1) and the preface gets a 505 (docs/api.md,
"Serving"). One standalone instance in its own process (tests/_apiutil.py), every variant
at once on its own connection (left open, half-closed, closed), then SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import trio
import trustme
from _apiutil import serving, standalone
from _bounds import bound

from gossipmgr.api import create_app

HERE = Path(__file__).parent
SETTINGS = b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n"
UPGRADE = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
BODY = b"Content-Type: application/json\r\nContent-Length: 12\r\n\r\n" + b'{"value": 1}'
VARIANTS = {
    "h2c, settings": b"GET /health HTTP/1.1\r\nHost: x\r\n" + UPGRADE + SETTINGS + b"\r\n",
    "h2c, no settings": b"GET /health HTTP/1.1\r\nHost: x\r\n" + UPGRADE + b"\r\n",
    "h2c, other route": b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n" + UPGRADE + SETTINGS + b"\r\n",
    "h2c, body": b"PUT /globals/u HTTP/1.1\r\nHost: x\r\n" + UPGRADE + SETTINGS + BODY,
    "preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    # the API has no WebSocket routes: the upgrade is ignored too (it got a 500 and logged
    # a traceback: the error handler read an HTTP request in a WebSocket's context)
    "websocket": b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
}


def _start(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    url_file = root / "url"
    cmd = [sys.executable, str(HERE / "_apiutil.py"), "--data", str(root / "data")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(
        [*cmd, "--url-file", str(url_file)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not url_file.exists():
        assert proc.poll() is None, "the instance died"
        assert time.monotonic() < deadline, "the instance did not start in 60 s"
        time.sleep(0.05)
    return proc, url_file.read_text()


def _stopped(proc: subprocess.Popen[bytes], within_s: float, name: str, bound_s: float) -> None:
    """SIGTERM ``proc``; it must exit cleanly within ``within_s`` (its stop time is recorded
    as the bound ``name``)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"SIGTERM did not stop the instance in {within_s:.0f} s") from None
    bound(name, time.monotonic() - started, bound_s)
    assert proc.returncode == 0


def _first_answer(sock: socket.socket) -> bytes:
    """An HTTP/1.1 answer's head (and what came with it), or the first bytes of another."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        data += chunk
        if not chunk or not data.startswith(b"HTTP/"[: len(data)]):
            break
    return data


def test_clients_that_ask_for_http2_and_leave_cannot_hang_a_stop(tmp_path: Path) -> None:
    proc, url = _start(tmp_path)
    socks: list[socket.socket] = []
    answers: list[tuple[str, bytes]] = []
    try:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        for name, request in VARIANTS.items():
            for leave in ("open", "half-close", "close"):
                s = socket.create_connection((host, int(port)), timeout=30)
                socks.append(s)
                s.sendall(request)
                answers.append((name, _first_answer(s)))
                if leave == "half-close":
                    s.shutdown(socket.SHUT_WR)
                elif leave == "close":
                    s.close()
        _stopped(proc, 30, "api.stop_with_http2_clients", 1.0)
        for name, answer in answers:
            if name == "preface":
                assert answer.startswith(b"HTTP/1.1 505 "), (name, answer)
                assert b"connection: close" in answer.lower()
            else:  # the upgrade ignored: answered in HTTP/1.1
                assert answer.startswith(b"HTTP/1.1 200 "), (name, answer)
                assert b"upgrade" not in answer.split(b"\r\n\r\n")[0].lower()
    finally:
        for s in socks:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path, Path]:
    """A client context trusting a new CA, and a certificate and key for 127.0.0.1 it signed."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return client, certfile, keyfile


async def test_tls_offers_only_http1_and_refuses_the_preface(tmp_path: Path) -> None:
    """With TLS hypercorn serves the socket itself: ALPN must not select h2 (which would
    start its HTTP/2 protocol directly), and the preface inside TLS gets the 505 too."""
    client, certfile, keyfile = _tls(tmp_path)
    client.set_alpn_protocols(["h2", "http/1.1"])
    async with standalone(tmp_path, claim=False) as ctx:
        app = create_app(ctx)
        async with serving(app, certfile=str(certfile), keyfile=str(keyfile)) as url:
            host, port = url.removeprefix("https://").rsplit(":", 1)
            with trio.fail_after(30):
                stream = await trio.open_ssl_over_tcp_stream(
                    host, int(port), ssl_context=client, https_compatible=True
                )
                async with stream:
                    await stream.do_handshake()
                    assert stream.selected_alpn_protocol() == "http/1.1"
                    await stream.send_all(VARIANTS["preface"])
                    answer = b""
                    while b"\r\n\r\n" not in answer:
                        chunk = await stream.receive_some(65536)
                        assert chunk, answer
                        answer += chunk
            assert answer.startswith(b"HTTP/1.1 505 "), answer


def _send_queue(port: int, client_port: int) -> int:
    """Bytes the server's end of the connection (local ``port``, remote ``client_port``)
    holds unsent in its kernel send queue (``/proc/net/tcp``'s tx_queue), or -1."""
    want = (f":{port:04X}", f":{client_port:04X}")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1].endswith(want[0]) and f[2].endswith(want[1]):
            return int(f[4].split(":")[0], 16)
    return -1


def test_a_client_that_stops_reading_cannot_hold_a_stop(tmp_path: Path) -> None:
    """A client pipelines requests for a large answer (one hypercorn serves: the front
    hands the connection over) and never reads. The answer's send, shielded from
    cancellation, waited for the kernel to abort the connection (``TCP_USER_TIMEOUT``,
    30 s) after SIGTERM; now a stop gives a send in flight ``STOP_SEND_GRACE_S``."""
    from gossipmgr.api.server import STOP_SEND_GRACE_S

    proc, url = _start(tmp_path)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        s.connect((host, int(port)))
        request = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
        s.sendall(request * 400)
        client_port = s.getsockname()[1]
        deadline = time.monotonic() + 60
        # the server's send queue stays full: its send waits for a client that never reads
        while _send_queue(int(port), client_port) < 8192:
            assert proc.poll() is None, "the instance died"
            assert time.monotonic() < deadline, "the server's sends never backed up"
            time.sleep(0.05)
        _stopped(proc, 20, "api.stop_with_a_stalled_client", STOP_SEND_GRACE_S + 1)
    finally:
        s.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_with_tls_a_client_that_stops_reading_cannot_hold_a_stop(tmp_path: Path) -> None:
    """The same with TLS, where hypercorn serves the socket itself, stopped gracefully
    (``shutdown_trigger``): the send gets ``graceful_timeout`` and its grace."""
    client, certfile, keyfile = _tls(tmp_path)
    async with standalone(tmp_path, claim=False) as ctx:
        app = create_app(ctx)
        sock = trio.socket.socket()
        try:
            with trio.fail_after(60) as limit:
                async with serving(app, certfile=str(certfile), keyfile=str(keyfile)) as url:
                    host, port = url.removeprefix("https://").rsplit(":", 1)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    await sock.connect((host, int(port)))
                    stream = trio.SSLStream(trio.SocketStream(sock), client, server_hostname=host)
                    await stream.do_handshake()
                    await stream.send_all(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 400)
                    client_port = sock.getsockname()[1]
                    while _send_queue(int(port), client_port) < 8192:  # noqa: ASYNC110 (kernel state)
                        await trio.sleep(0.05)
                    started = trio.current_time()
                    limit.deadline = started + 20  # the stop, before the kernel's abort (30 s)
                # a graceful stop: 2 s for the clients, then the sends' grace
            bound("api.tls_stop_with_a_stalled_client", trio.current_time() - started, 5.0)
        finally:
            sock.close()
