"""Content-Length on the notify path: only ASCII digits of a sane length, else 400 ``bad_content_length``.

``str.isdigit()`` alone let ``"²"`` (what a latin-1 header byte 0xb2 decodes to: WSGI and ASGI servers
decode header bytes as latin-1) and 4,301 digits through to ``int()``, which raised: a 500 with a
traceback on werkzeug's own server (``run_simple``, ``flask run``; Django's runserver parses headers the
same way), and an exception out of the ASGI app.

Headers are written here as the bytes a client puts on the wire. werkzeug's ``EnvironBuilder`` always
computes ``CONTENT_LENGTH`` from the body, so the WSGI client's environ gets the header's value set under
it, decoded as a server decodes it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from werkzeug.serving import make_server

from alipay_middleware import Alipay
from alipay_middleware.callbacks.answers import precheck
from conftest import Recorder, notify_fields, signed_body

NOTIFY = "/alipay/notify"
UTF8_SUPERSCRIPT_TWO = "²".encode()  # b"\xc2\xb2": a server hands it over as "Â²"
LATIN1_SUPERSCRIPT_TWO = b"\xb2"  # handed over as "²", which str.isdigit() accepts and int() refuses
TOO_MANY_DIGITS = b"1" * 4301  # int() refuses more than 4,300 digits

# (id, Content-Length bytes on the wire)
REFUSED = [
    ("letters", b"abc"),
    ("utf8-superscript-two", UTF8_SUPERSCRIPT_TWO),
    ("latin1-superscript-two", LATIN1_SUPERSCRIPT_TWO),
    ("latin1-superscript-one-three", b"\xb9\xb3"),
    ("4301-digits", TOO_MANY_DIGITS),
    ("19-digits", b"1" * 19),
    ("19-digits-leading-zeros", b"0" * 16 + b"100"),
    ("negative", b"-1"),
    ("plus-sign", b"+3"),
    ("inner-space", b"1 0"),
    ("two-values", b"10,10"),
]


@pytest.mark.parametrize("case", [(b"0", True), (b"7", True), (b"00007", True), (b"65536", True),
                                  (b"65537", False), (b"9" * 18, False)],
                         ids=["zero", "seven", "leading-zeros", "max-body", "over-max-body", "18-digits"])
def test_precheck_accepts_ascii_digits_up_to_18(case: tuple[bytes, bool]) -> None:
    value, fits = case
    answer = precheck("POST", value.decode("latin-1"), 65536)
    assert answer is None if fits else (answer is not None and answer.status == 413)


@pytest.mark.parametrize("value", [v for _, v in REFUSED], ids=[i for i, _ in REFUSED])
def test_precheck_refuses_other_values(value: bytes) -> None:
    answer = precheck("POST", value.decode("latin-1"), 65536)
    assert answer is not None and (answer.status, answer.reason) == (400, "bad_content_length")


# -- through both fronts ----------------------------------------------------------------------------------------

@pytest.fixture
def post_with_length(make_alipay: Callable[..., Alipay], mount: Callable[..., Any],
                     front_kind: str) -> Iterator[Callable[[bytes, bytes], Any]]:
    """``post(body, content_length_bytes)`` to a shop with order T1 of 9.90; yields it, then checks nothing
    was recorded for a refused request (the caller says which)."""
    alipay = make_alipay(orders={"T1": "9.90"})
    paid = Recorder()
    alipay.on_paid(paid)
    client = mount(alipay)
    header: dict[str, str] = {}
    if front_kind == "wsgi":
        wrapped = client.app

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            environ["CONTENT_LENGTH"] = header["value"]
            return wrapped(environ, start_response)

        client.app = app

    def post(body: bytes, content_length: bytes) -> Any:
        header["value"] = content_length.decode("latin-1")
        return client.request("POST", NOTIFY, body, headers={"Content-Length": header["value"]})

    post.alipay = alipay  # type: ignore[attr-defined]
    post.paid = paid  # type: ignore[attr-defined]
    yield post


@pytest.mark.parametrize("value", [v for _, v in REFUSED], ids=[i for i, _ in REFUSED])
def test_bad_content_length_is_400_before_the_body_is_read(post_with_length: Any, keys: Any, value: bytes,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    # A genuine, correctly signed notification: only the header can make it fail.
    body = signed_body(notify_fields("T1"), keys.alipay)
    with caplog.at_level(logging.DEBUG, logger="alipay_middleware"):
        response = post_with_length(body, value)
    assert (response.status, response.body) == (400, b"fail")
    assert "notify rejected" not in caplog.text  # refused before the body reached the flow
    assert post_with_length.paid.calls == []
    assert list(post_with_length.alipay.ledger.events()) == []


@pytest.mark.parametrize("leading", [b"", b"000"], ids=["exact", "leading-zeros"])
def test_good_content_length_still_processes(post_with_length: Any, keys: Any, leading: bytes) -> None:
    body = signed_body(notify_fields("T1"), keys.alipay)
    response = post_with_length(body, leading + str(len(body)).encode())
    assert (response.status, response.body) == (200, b"success")
    assert len(post_with_length.paid.calls) == 1


# -- real servers on loopback -----------------------------------------------------------------------------------

class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(self.format(r) for r in self.records)


def raw_post(port: int, content_length: bytes, body: bytes = b"a=b") -> bytes:
    """One request with the header exactly as given; the whole answer, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST " + NOTIFY.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: " + content_length + b"\r\nConnection: close\r\n\r\n" + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


SERVER_CASES = [("utf8-superscript-two", UTF8_SUPERSCRIPT_TWO),
                ("latin1-superscript-two", LATIN1_SUPERSCRIPT_TWO),
                ("4301-digits", TOO_MANY_DIGITS),
                ("19-digits", b"1" * 19)]


@pytest.mark.parametrize("value", [v for _, v in SERVER_CASES], ids=[i for i, _ in SERVER_CASES])
def test_werkzeug_server_answers_400_without_a_traceback(make_alipay: Callable[..., Alipay], value: bytes,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    from conftest import inner_wsgi

    alipay = make_alipay(orders={"T1": "9.90"})
    alipay.on_paid(Recorder())
    collect = Collect()
    werkzeug_log = logging.getLogger("werkzeug")
    werkzeug_log.addHandler(collect)
    server = make_server("127.0.0.1", 0, alipay.wsgi(inner_wsgi), threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        answer = raw_post(server.server_address[1], value)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        werkzeug_log.removeHandler(collect)
    assert status_of(answer) == 400, answer[:200]
    assert answer.endswith(b"\r\n\r\nfail")
    logged = collect.text()
    assert any(" 400 " in f"{r.getMessage()} " for r in collect.records)  # the server's access line was seen
    assert "Traceback" not in logged and "Error on request" not in logged
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("value", [v for _, v in SERVER_CASES], ids=[i for i, _ in SERVER_CASES])
def test_uvicorn_never_answers_500(make_alipay: Callable[..., Alipay], value: bytes,
                                   caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn on h11 refuses non-digit and huge Content-Length values itself ("Invalid HTTP request
    received.", 400) before the app sees them; 19 digits do reach the app, which answers 400."""
    from conftest import inner_asgi

    alipay = make_alipay(orders={"T1": "9.90"})
    alipay.on_paid(Recorder())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(alipay.asgi(inner_asgi), lifespan="off", log_level="debug",
                                           log_config=None, ws="none", http="h11"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    with caplog.at_level(logging.DEBUG):
        thread.start()
        try:
            while not server.started:
                assert thread.is_alive(), "uvicorn did not start"
                time.sleep(0.02)
            answer = raw_post(sock.getsockname()[1], value)
        finally:
            server.should_exit = True
            thread.join(10)
            sock.close()
    assert status_of(answer) == 400, answer[:200]
    if value == b"1" * 19:
        assert answer.endswith(b"\r\n\r\nfail")  # our answer, not uvicorn's
    else:
        assert answer.endswith(b"Invalid HTTP request received.")
    assert not [r for r in caplog.records if r.exc_info]
    assert "Traceback" not in caplog.text and "Exception in ASGI application" not in caplog.text
