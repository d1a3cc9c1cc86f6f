"""pyc10d.core.auth: key loading and the HMAC challenge-response, on socket pairs."""

from __future__ import annotations

import socket
import threading

import pytest

from pyc10d.core.auth import (
    NO_AUTH_REPLY,
    AuthenticationError,
    HandshakeFailed,
    ServerHandshake,
    UnexpectedReply,
    client_handshake,
    hello_state,
    load_key,
    mac,
    new_key,
)

CONTEXT = b"test"


def test_load_key_from_the_variable_or_the_file(tmp_path):
    assert load_key({}) is None
    assert load_key({"PYC10D_AUTH_KEY": "", "PYC10D_AUTH_KEY_FILE": ""}) is None
    assert load_key({"PYC10D_AUTH_KEY": "s3cret"}) == b"s3cret"
    path = tmp_path / "key"
    path.write_bytes(b"  from-a-file\n")
    assert load_key({"PYC10D_AUTH_KEY_FILE": str(path)}) == b"from-a-file"
    with pytest.raises(ValueError, match="not both"):
        load_key({"PYC10D_AUTH_KEY": "a", "PYC10D_AUTH_KEY_FILE": str(path)})
    with pytest.raises(ValueError, match="cannot be read"):
        load_key({"PYC10D_AUTH_KEY_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_bytes(b"\n")
    with pytest.raises(ValueError, match="is empty"):
        load_key({"PYC10D_AUTH_KEY_FILE": str(tmp_path / "empty")})
    assert len(new_key()) == 64 and new_key() != new_key()


def test_mac_separates_its_parts():
    assert mac(b"k", b"l", b"ab", b"c") != mac(b"k", b"l", b"a", b"bc")
    assert mac(b"k", b"l", b"x") != mac(b"other", b"l", b"x")


def _serve(sock: socket.socket, key: bytes, outcome: list) -> None:
    """The server side over a blocking socket, reading exactly what the handshake needs."""
    handshake = ServerHandshake(key, CONTEXT)
    try:
        while not handshake.done:
            data = sock.recv(handshake.needed)
            if not data:
                outcome.append("eof")
                return
            reply = handshake.feed(data)
            if reply:
                sock.sendall(reply)
        outcome.append("ok")
    except HandshakeFailed as exc:
        outcome.append(("failed", exc.foreign))
        if exc.reply:
            sock.sendall(exc.reply)
    finally:
        sock.close()


def _run(client_key: bytes, server_key: bytes) -> tuple[BaseException | None, list]:
    a, b = socket.socketpair()
    a.settimeout(10)
    outcome: list = []
    server = threading.Thread(target=_serve, args=(b, server_key, outcome))
    server.start()
    error = None
    try:
        client_handshake(a, client_key, CONTEXT, "the test server")
    except AuthenticationError as exc:
        error = exc
    finally:
        a.close()
        server.join(10)
    return error, outcome


def test_same_key_authenticates_both_sides():
    assert _run(b"key", b"key") == (None, ["ok"])


def test_wrong_key_is_rejected_by_the_server():
    error, outcome = _run(b"wrong", b"key")
    assert outcome == [("failed", False)]
    assert "rejected this process's authentication key" in str(error)


def test_a_server_with_another_key_cannot_pass_itself_off():
    """The server's proof is checked too: a fake server that accepts anything is caught."""
    a, b = socket.socketpair()
    a.settimeout(10)

    def fake() -> None:
        hello = b.recv(40)
        b.sendall(b"pyc10dC1" + bytes(32))
        b.recv(32)
        b.sendall(b"\x01" + mac(b"other", b"server", CONTEXT, hello[8:], bytes(32)))
        b.close()

    thread = threading.Thread(target=fake)
    thread.start()
    with pytest.raises(AuthenticationError, match="did not prove it knows"):
        client_handshake(a, b"key", CONTEXT, "the test server")
    a.close()
    thread.join(10)


def test_no_auth_and_foreign_answers():
    a, b = socket.socketpair()
    a.settimeout(10)
    b.sendall(NO_AUTH_REPLY)
    with pytest.raises(AuthenticationError, match="does not use authentication"):
        client_handshake(a, b"key", CONTEXT, "the test server")
    a.close()
    b.close()
    a, b = socket.socketpair()
    a.settimeout(10)
    b.sendall(b"\x10\x00\x00\x00garbage!")
    with pytest.raises(UnexpectedReply) as info:
        client_handshake(a, b"key", CONTEXT, "the test server")
    assert info.value.data == b"\x10\x00\x00\x00garb"  # its first 8 bytes, for the caller
    a.close()
    b.close()
    with pytest.raises(HandshakeFailed) as failed:
        ServerHandshake(b"key", CONTEXT).feed(b"pTCP")
    assert failed.value.foreign


def test_hello_state():
    assert hello_state(b"") is None
    assert hello_state(b"pyc1") is None
    assert hello_state(b"pyc10dH1" + bytes(32)) is True
    assert hello_state(b"\x0d\x00\x00\x00") is False
