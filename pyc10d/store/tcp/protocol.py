"""The TCPStore wire format: length-prefixed binary frames, one request and one reply per op.

A frame is ``<u32 payload length> <u8 code> <u32 nargs> <i64 num>`` followed by ``nargs``
arguments, each ``<u32 length> <bytes>``. Requests carry an opcode, replies a status; ``num``
holds an integer operand or result (a timeout in ms, an add amount, a count).

Request frames are capped (``PYC10D_STORE_MAX_FRAME`` bytes of payload, 64 MiB by default: eight
times torch's 8 MiB per value, and bounded so that one connection cannot make the server buffer
a gigabyte): a client refuses to send a larger one, a server answers one with an ERROR naming the
limit and drops the connection.
"""

from __future__ import annotations

import enum
import os
import struct

HEADER = struct.Struct("<IBIq")
ARG_LEN = struct.Struct("<I")
HEADER_BODY = HEADER.size - 4  # bytes of the header counted in the payload length
FRAME_LIMIT = (1 << 32) - 1  # the most a u32 length can say: replies are checked against this
MAX_FRAME_ENV = "PYC10D_STORE_MAX_FRAME"
DEFAULT_MAX_FRAME = 64 << 20  # request frames, unless MAX_FRAME_ENV says otherwise
NO_TIMEOUT = -1
AUTH_CONTEXT = b"pyc10d-tcpstore"  # what a TCPStore connection authenticates for (core.auth)
_SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class Op(enum.IntEnum):
    """Request opcodes."""

    SET = 1
    GET = 2
    ADD = 3
    COMPARE_SET = 4
    WAIT = 5
    CHECK = 6
    DELETE = 7
    NUM_KEYS = 8
    LIST_KEYS = 9
    MULTI_GET = 10
    MULTI_SET = 11
    APPEND = 12
    QUEUE_PUSH = 13
    QUEUE_POP = 14
    QUEUE_LEN = 15
    PING = 16


class Status(enum.IntEnum):
    """Reply statuses."""

    OK = 0
    TIMEOUT = 1  # args: the keys still missing
    VALUE_ERROR = 2  # args: message
    QUEUE_EMPTY = 3
    ERROR = 4  # args: message


class ProtocolError(ValueError):
    """A peer sent bytes that are not a valid frame."""


class FrameTooLarge(ProtocolError):
    """A frame announced ``size`` payload bytes, more than the reader's ``limit``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


def parse_size(text: str, name: str) -> int:
    """A positive byte count: an integer, optionally with a K, M or G (binary) suffix."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = _SIZE_SUFFIXES.get(raw[-1:], 1)
    if scale != 1:
        raw = raw[:-1]
    try:
        value = int(raw) * scale
    except ValueError:
        raise ValueError(
            f"{name} must be a byte count like 67108864 or 64M, got {text!r}"
        ) from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {text!r}")
    return value


def max_frame() -> int:
    """The request-frame cap: ``PYC10D_STORE_MAX_FRAME`` (bytes, or 64M...) or 64 MiB."""
    text = os.environ.get(MAX_FRAME_ENV, "")
    if not text.strip():
        return DEFAULT_MAX_FRAME
    return min(parse_size(text, MAX_FRAME_ENV), FRAME_LIMIT)


def too_large_message(size: int, limit: int, where: str) -> str:
    """What a client is told about a request frame of ``size`` bytes over ``limit``."""
    return (
        f"TCPStore request of {size} bytes exceeds the {where}'s limit of {limit} bytes; raise "
        f"{MAX_FRAME_ENV} (in bytes, e.g. 256M) on the master (rank 0) and on the clients"
    )


HEADER_1ARG = struct.Struct("<IBIqI")  # a header and the length of a single argument


def encode(code: int, num: int = 0, args: tuple[bytes, ...] | list[bytes] = ()) -> bytes:
    """Build one frame."""
    if not args:
        return HEADER.pack(HEADER_BODY, code, 0, num)
    if len(args) == 1 and len(args[0]) < FRAME_LIMIT - 64:  # the common case, without the loop
        arg = args[0]
        return HEADER_1ARG.pack(HEADER_BODY + 4 + len(arg), code, 1, num, len(arg)) + arg
    if len(args) == 2 and len(args[0]) + len(args[1]) < FRAME_LIMIT - 64:  # key and value
        key, value = args
        size = HEADER_BODY + 8 + len(key) + len(value)
        head = HEADER_1ARG.pack(size, code, 2, num, len(key))
        return b"".join((head, key, ARG_LEN.pack(len(value)), value))
    parts = [b""]
    size = HEADER_BODY
    for arg in args:
        parts.append(ARG_LEN.pack(len(arg)))
        parts.append(arg)
        size += 4 + len(arg)
    if size > FRAME_LIMIT:
        raise ValueError(f"store message of {size} bytes exceeds the {FRAME_LIMIT}-byte limit")
    parts[0] = HEADER.pack(size, code, len(args), num)
    return b"".join(parts)


def frame_size(buf: bytearray | bytes) -> int:
    """Total bytes of the frame starting ``buf`` (its header may be incomplete: at least 4)."""
    if len(buf) < 4:
        return 4
    return 4 + ARG_LEN.unpack_from(buf, 0)[0]


def check_length(size: int, limit: int) -> None:
    """Raise ProtocolError for a payload length that cannot be valid, FrameTooLarge over
    ``limit``."""
    if size < HEADER_BODY:
        raise ProtocolError(f"invalid frame length {size}")
    if size > limit:
        raise FrameTooLarge(size, limit)


def _check_partial_header(buf: bytes, offset: int, limit: int) -> None:
    """Check the length of the incomplete header at ``offset`` once it is there."""
    if len(buf) - offset >= 4:
        check_length(ARG_LEN.unpack_from(buf, offset)[0], limit)


def decode(
    buf: bytes, offset: int, limit: int = FRAME_LIMIT
) -> tuple[int, int, int, list[bytes]] | None:
    """Parse the frame at ``offset``: ``(end offset, code, num, args)``, or None if incomplete.

    ``args`` are slices of ``buf``: pass ``bytes`` to get ``bytes`` arguments.
    Raises ProtocolError for a length or argument layout that cannot be valid, FrameTooLarge
    (as soon as the length is readable) for a payload longer than ``limit``.
    """
    if len(buf) - offset < HEADER.size:
        _check_partial_header(buf, offset, limit)
        return None
    size, code, nargs, num = HEADER.unpack_from(buf, offset)
    if not HEADER_BODY <= size <= limit:
        check_length(size, limit)
    end = offset + 4 + size
    if len(buf) < end:
        return None
    pos = offset + HEADER.size
    if nargs == 1 and pos + 4 <= end:  # the common case, without the loop
        (length,) = ARG_LEN.unpack_from(buf, pos)
        if pos + 4 + length != end:
            raise ProtocolError("argument length does not match the frame")
        return end, code, num, [buf[pos + 4 : end]]
    args = []
    for _ in range(nargs):
        if pos + 4 > end:
            raise ProtocolError("argument header past the end of the frame")
        (length,) = ARG_LEN.unpack_from(buf, pos)
        pos += 4
        if pos + length > end:
            raise ProtocolError("argument past the end of the frame")
        args.append(buf[pos : pos + length])
        pos += length
    if pos != end:
        raise ProtocolError("trailing bytes in frame")
    return end, code, num, args
