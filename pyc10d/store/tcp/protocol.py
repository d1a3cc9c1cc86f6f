"""The TCPStore wire format: length-prefixed binary frames, one request and one reply per op.

A frame is ``<u32 payload length> <u8 code> <u32 nargs> <i64 num>`` followed by ``nargs``
arguments, each ``<u32 length> <bytes>``. Requests carry an opcode, replies a status; ``num``
holds an integer operand or result (a timeout in ms, an add amount, a count).
"""

from __future__ import annotations

import enum
import struct

HEADER = struct.Struct("<IBIq")
ARG_LEN = struct.Struct("<I")
HEADER_BODY = HEADER.size - 4  # bytes of the header counted in the payload length
MAX_FRAME = 1 << 30  # larger frames are treated as garbage and drop the connection
NO_TIMEOUT = -1


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


HEADER_1ARG = struct.Struct("<IBIqI")  # a header and the length of a single argument


def encode(code: int, num: int = 0, args: tuple[bytes, ...] | list[bytes] = ()) -> bytes:
    """Build one frame."""
    if not args:
        return HEADER.pack(HEADER_BODY, code, 0, num)
    if len(args) == 1 and len(args[0]) < MAX_FRAME - 64:  # the common case, without the loop
        arg = args[0]
        return HEADER_1ARG.pack(HEADER_BODY + 4 + len(arg), code, 1, num, len(arg)) + arg
    if len(args) == 2 and len(args[0]) + len(args[1]) < MAX_FRAME - 64:  # key and value
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
    if size > MAX_FRAME:
        raise ValueError(f"store message of {size} bytes exceeds the {MAX_FRAME}-byte limit")
    parts[0] = HEADER.pack(size, code, len(args), num)
    return b"".join(parts)


def frame_size(buf: bytearray | bytes) -> int:
    """Total bytes of the frame starting ``buf`` (its header may be incomplete: at least 4)."""
    if len(buf) < 4:
        return 4
    return 4 + ARG_LEN.unpack_from(buf, 0)[0]


def _check_partial_header(buf: bytes, offset: int) -> None:
    """Raise ProtocolError if the incomplete header at ``offset`` has an invalid length."""
    if len(buf) - offset < 4:
        return  # not even the length is there yet
    if not HEADER_BODY <= ARG_LEN.unpack_from(buf, offset)[0] <= MAX_FRAME:
        raise ProtocolError("invalid frame length")


def decode(buf: bytes, offset: int) -> tuple[int, int, int, list[bytes]] | None:
    """Parse the frame at ``offset``: ``(end offset, code, num, args)``, or None if incomplete.

    ``args`` are slices of ``buf``: pass ``bytes`` to get ``bytes`` arguments.
    Raises ProtocolError for a length or argument layout that cannot be valid.
    """
    if len(buf) - offset < HEADER.size:
        _check_partial_header(buf, offset)
        return None
    size, code, nargs, num = HEADER.unpack_from(buf, offset)
    if not HEADER_BODY <= size <= MAX_FRAME:
        raise ProtocolError(f"invalid frame length {size}")
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
