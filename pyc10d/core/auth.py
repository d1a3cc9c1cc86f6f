"""Optional shared-secret authentication of pyc10d's connections: HMAC challenge-response.

Off unless a key is configured, so that nothing changes for jobs (and torch interop) without one:
``PYC10D_AUTH_KEY`` holds the key itself, ``PYC10D_AUTH_KEY_FILE`` names a file holding it
(``pyc10d-run --auth`` makes one per job). With a key, every TCPStore connection and every TCP
mesh connection opens with a mutual challenge-response, before any other byte is accepted::

    client -> server  HELLO      "pyc10dH1" + client nonce (32 bytes)
    server -> client  CHALLENGE  "pyc10dC1" + server nonce (32 bytes)
    client -> server  PROOF      HMAC-SHA256(key, "client", context, both nonces)   (32 bytes)
    server -> client  VERDICT    1 + HMAC-SHA256(key, "server", context, both nonces) (33 bytes),
                                 or 33 zero bytes: the client's proof was wrong

The client proves itself first, so the server proves its own knowledge only to a client that
already did; each side checks the other with :func:`hmac.compare_digest`. Fresh nonces
(:mod:`secrets`) on both sides make every proof good for one connection only. ``context`` names
what is being joined (the store; one group's mesh), so a proof for one cannot open another.

A server without a key answers HELLO with NO_AUTH (``"pyc10dN1"`` + 32 zero bytes), so a client
with a key fails at once with a clear error instead of waiting; a server with a key that gets
something else than HELLO reports its own refusal in its protocol (see the users of
:class:`ServerHandshake`). The key only gates connections: messages after the handshake are not
signed or encrypted, and per-operation cost is zero.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
from collections.abc import Mapping

from .errors import DistNetworkError

KEY_ENV = "PYC10D_AUTH_KEY"
KEY_FILE_ENV = "PYC10D_AUTH_KEY_FILE"
KEY_VARIABLES = f"{KEY_ENV} or {KEY_FILE_ENV}"  # for messages

HELLO_MAGIC = b"pyc10dH1"
CHALLENGE_MAGIC = b"pyc10dC1"
NO_AUTH_MAGIC = b"pyc10dN1"  # a server without a key, answering HELLO
REQUIRED_MAGIC = b"pyc10dR1"  # a server with a key, answering a peer that sent no HELLO
MAGIC_SIZE = 8
NONCE_SIZE = 32
PROOF_SIZE = hashlib.sha256().digest_size  # 32
HELLO_SIZE = MAGIC_SIZE + NONCE_SIZE
CHALLENGE_SIZE = MAGIC_SIZE + NONCE_SIZE
VERDICT_SIZE = 1 + PROOF_SIZE
ACCEPTED = 1
REJECTED = bytes(VERDICT_SIZE)
NO_AUTH_REPLY = NO_AUTH_MAGIC + bytes(NONCE_SIZE)
_DOMAIN = b"pyc10d-auth-v1"


class AuthenticationError(DistNetworkError):
    """A connection could not be authenticated (no key, a different key, or no pyc10d peer)."""


class UnexpectedReply(AuthenticationError):
    """The server answered HELLO with bytes of another protocol; ``data`` holds them."""

    def __init__(self, message: str, data: bytes) -> None:
        super().__init__(message)
        self.data = data


class HandshakeFailed(Exception):
    """The server side of a handshake failed: ``reason`` for the log, ``reply`` (possibly empty)
    to send before dropping the connection, ``foreign`` when the peer sent no HELLO at all."""

    def __init__(self, reason: str, reply: bytes = b"", foreign: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply
        self.foreign = foreign


def load_key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The shared key from ``PYC10D_AUTH_KEY`` or the file ``PYC10D_AUTH_KEY_FILE`` names.

    None when neither is set (or both are empty): authentication is off. The file's content is
    used without its surrounding whitespace. ValueError when both are set, or the file cannot be
    read or is empty (a job that asked for authentication must not silently run without it).
    """
    env = os.environ if environ is None else environ
    raw = env.get(KEY_ENV, "")
    path = env.get(KEY_FILE_ENV, "")
    if raw and path:
        raise ValueError(f"set {KEY_ENV} or {KEY_FILE_ENV}, not both")
    if raw:
        return raw.encode()
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
    except OSError as exc:
        raise ValueError(f"{KEY_FILE_ENV}={path} cannot be read: {exc}") from None
    if not key:
        raise ValueError(f"{KEY_FILE_ENV}={path} is empty")
    return key


def new_key() -> str:
    """A fresh random key (64 hex digits), as ``pyc10d-run --auth`` hands to its workers."""
    return secrets.token_hex(32)


def mac(key: bytes, label: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 under ``key`` of ``label`` and ``parts``, each length-prefixed (unambiguous)."""
    h = hmac.new(key, _DOMAIN, hashlib.sha256)
    for part in (label, *parts):
        h.update(len(part).to_bytes(4, "little"))
        h.update(part)
    return h.digest()


def _proof(key: bytes, role: bytes, context: bytes, client_nonce: bytes, server_nonce: bytes):
    return mac(key, role, context, client_nonce, server_nonce)


def _recv_exact(sock: socket.socket, size: int, what: str) -> bytes:
    """Read exactly ``size`` bytes (the socket's timeout applies); AuthenticationError on EOF."""
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise AuthenticationError(f"{what} closed the connection during authentication")
        buf += chunk
    return bytes(buf)


def client_handshake(sock: socket.socket, key: bytes, context: bytes, what: str) -> None:
    """Authenticate over ``sock`` as the client: prove knowledge of ``key``, check the server's.

    ``what`` names the server in messages (``"the TCPStore server at host:port"``). The socket's
    timeout bounds each read. Raises AuthenticationError (:class:`UnexpectedReply` when the
    server answered in another protocol, e.g. an error frame); TimeoutError/OSError pass through.
    """
    client_nonce = secrets.token_bytes(NONCE_SIZE)
    sock.sendall(HELLO_MAGIC + client_nonce)
    magic = _recv_exact(sock, MAGIC_SIZE, what)
    if magic == NO_AUTH_MAGIC:
        raise AuthenticationError(
            f"{what} does not use authentication, but this process has a key ({KEY_VARIABLES}): "
            "give every process of the job the same key, or none"
        )
    if magic != CHALLENGE_MAGIC:
        raise UnexpectedReply(f"{what} did not answer the authentication hello", magic)
    server_nonce = _recv_exact(sock, NONCE_SIZE, what)
    sock.sendall(_proof(key, b"client", context, client_nonce, server_nonce))
    verdict = _recv_exact(sock, VERDICT_SIZE, what)
    if verdict[0] != ACCEPTED:
        raise AuthenticationError(
            f"{what} rejected this process's authentication key: the key ({KEY_VARIABLES}) "
            "differs between this process and that server"
        )
    expected = _proof(key, b"server", context, client_nonce, server_nonce)
    if not hmac.compare_digest(verdict[1:], expected):
        raise AuthenticationError(
            f"{what} did not prove it knows the authentication key ({KEY_VARIABLES}): "
            "it is not the job's server, or its key differs"
        )


class ServerHandshake:
    """The server side of one handshake, fed the bytes as they arrive (for event loops).

    :meth:`feed` returns the bytes to send back. Once :attr:`done`, :attr:`leftover` holds what
    came after the handshake. :attr:`needed` is how many bytes the current message still lacks,
    for callers that must not read past the handshake. Raises :class:`HandshakeFailed`.
    """

    __slots__ = ("_buf", "_client_nonce", "_context", "_key", "_server_nonce", "done", "leftover")

    def __init__(self, key: bytes, context: bytes) -> None:
        self._key = key
        self._context = context
        self._buf = bytearray()
        self._client_nonce = b""
        self._server_nonce = b""
        self.done = False
        self.leftover = b""

    @property
    def needed(self) -> int:
        """Bytes still missing from the message being read (the magic first, on its own)."""
        if self._client_nonce:
            return PROOF_SIZE - len(self._buf)
        if len(self._buf) < MAGIC_SIZE:
            return MAGIC_SIZE - len(self._buf)
        return HELLO_SIZE - len(self._buf)

    def feed(self, data: bytes) -> bytes:
        """Take ``data``; return what to send (possibly nothing yet)."""
        if self.done:
            raise RuntimeError("handshake already done")
        self._buf += data
        if not self._client_nonce:
            head = bytes(self._buf[:MAGIC_SIZE])
            if not HELLO_MAGIC.startswith(head):
                raise HandshakeFailed("it did not authenticate (no key?)", foreign=True)
            if len(self._buf) < HELLO_SIZE:
                return b""
            self._client_nonce = bytes(self._buf[MAGIC_SIZE:HELLO_SIZE])
            del self._buf[:HELLO_SIZE]
            self._server_nonce = secrets.token_bytes(NONCE_SIZE)
            reply = CHALLENGE_MAGIC + self._server_nonce
            if len(self._buf) < PROOF_SIZE:
                return reply
            return reply + self._finish()
        if len(self._buf) < PROOF_SIZE:
            return b""
        return self._finish()

    def _finish(self) -> bytes:
        proof, self.leftover = bytes(self._buf[:PROOF_SIZE]), bytes(self._buf[PROOF_SIZE:])
        self._buf.clear()
        nonces = (self._client_nonce, self._server_nonce)
        expected = _proof(self._key, b"client", self._context, *nonces)
        if not hmac.compare_digest(proof, expected):
            raise HandshakeFailed("wrong authentication proof (a different key?)", REJECTED)
        self.done = True
        return bytes([ACCEPTED]) + _proof(self._key, b"server", self._context, *nonces)


def hello_state(prefix: bytes) -> bool | None:
    """For a server without a key: whether a connection's first bytes are an auth HELLO
    (True), not one (False), or too few to tell (None)."""
    head = prefix[:MAGIC_SIZE]
    if not HELLO_MAGIC.startswith(head):
        return False
    return True if len(head) == MAGIC_SIZE else None


__all__ = [
    "KEY_ENV",
    "KEY_FILE_ENV",
    "AuthenticationError",
    "HandshakeFailed",
    "ServerHandshake",
    "UnexpectedReply",
    "client_handshake",
    "hello_state",
    "load_key",
    "mac",
    "new_key",
]
