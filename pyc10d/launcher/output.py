"""Stream a worker's output to the console as it comes, keeping the tail of it for reports.

A :class:`StreamPump` thread reads one pipe: it forwards complete lines (up to a newline or a
carriage return, so progress bars still move), with an optional prefix, to a :class:`Console`
stream, and keeps the last lines in a ring buffer.
"""

from __future__ import annotations

import codecs
import os
import sys
import threading
from collections import deque
from typing import IO

TAIL_LINES = 200
MAX_LINE_BYTES = 4096  # longer lines are cut in the tail (not on the console)
READ_SIZE = 65536


class Console:
    """A lock-protected writer of bytes to a text stream (``sys.stdout``/``sys.stderr``)."""

    def __init__(self, stream_name: str):
        self._stream_name = stream_name
        self._lock = threading.Lock()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def stream(self) -> IO[str]:
        """The current ``sys.<stream_name>`` (looked up each time: tests may swap it)."""
        return getattr(sys, self._stream_name)

    def write(self, data: bytes) -> None:
        """Write ``data`` and flush; through the binary buffer when the stream has one."""
        with self._lock:
            stream = self.stream
            try:
                buffer = getattr(stream, "buffer", None)
                if buffer is not None:
                    stream.flush()
                    buffer.write(data)
                    buffer.flush()
                else:
                    stream.write(self._decoder.decode(data))
                    stream.flush()
            except (OSError, ValueError):
                pass  # a closed console must not kill the launcher

    def print(self, text: str) -> None:
        """Write one line of launcher text."""
        self.write((text.rstrip("\n") + "\n").encode("utf-8", errors="replace"))


STDOUT = Console("stdout")
STDERR = Console("stderr")


class StreamPump(threading.Thread):
    """Copy a worker's pipe to ``console`` (optionally prefixing lines) and keep its last lines.

    With a ``log`` file (opened binary; the pump closes it at the end) it copies the bytes
    there too, as they come and without the prefix (``--tee``; ``--redirects`` with no console).
    """

    def __init__(
        self,
        pipe: IO[bytes],
        console: Console | None,
        prefix: bytes = b"",
        tail_lines: int = TAIL_LINES,
        name: str = "pyc10d-run-pump",
        log: IO[bytes] | None = None,
    ):
        super().__init__(name=name, daemon=True)
        self._fd = pipe.fileno()
        self._pipe = pipe
        self._log = log
        self._console = console
        self._prefix = prefix
        self._tail: deque[bytes] = deque(maxlen=tail_lines)
        self._partial = b""  # bytes after the last newline (tail and prefixed output)
        self._unsent = b""  # unprefixed output not yet forwarded (an unfinished line)
        self._lock = threading.Lock()

    def run(self) -> None:
        """Read until EOF (every writer of the pipe closed it), then flush the partial line."""
        try:
            while True:
                try:
                    chunk = os.read(self._fd, READ_SIZE)
                except InterruptedError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                self._feed(chunk)
        finally:
            self._finish()
            for stream in (self._pipe, self._log):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass

    def _write_log(self, chunk: bytes) -> None:
        if self._log is None:
            return
        try:
            self._log.write(chunk)
            self._log.flush()  # so that ``tail -f`` follows it
        except (OSError, ValueError):  # a full disk must not stop the console output
            log, self._log = self._log, None
            try:
                log.close()
            except OSError:
                pass

    def _feed(self, chunk: bytes) -> None:
        self._write_log(chunk)
        if self._console is not None and not self._prefix:
            # whole lines only (up to the last newline or carriage return), so that two workers'
            # lines never interleave mid-line: an unbuffered print writes text and "\n" apart
            data = self._unsent + chunk
            cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
            if len(data) - cut > READ_SIZE:  # a huge line without newline: pass it on
                cut = len(data)
            if cut:
                self._console.write(data[:cut])
            self._unsent = data[cut:]
        data = self._partial + chunk
        *lines, partial = data.split(b"\n")
        if len(partial) > READ_SIZE:  # a huge line without newline: pass it on as a line
            lines.append(partial)
            partial = b""
        with self._lock:
            self._partial = partial
            for line in lines:
                self._tail.append(line[:MAX_LINE_BYTES])
        if self._console is not None and self._prefix and lines:
            self._console.write(b"".join(self._prefix + line + b"\n" for line in lines))

    def _finish(self) -> None:
        if self._unsent and self._console is not None:
            self._console.write(self._unsent)
            self._unsent = b""
        with self._lock:
            partial, self._partial = self._partial, b""
            if partial:
                self._tail.append(partial[:MAX_LINE_BYTES])
        if partial and self._console is not None and self._prefix:
            self._console.write(self._prefix + partial + b"\n")

    def tail(self) -> list[str]:
        """The last lines read so far (a partial last line included), decoded."""
        with self._lock:
            lines = list(self._tail)
            if self._partial:
                lines.append(self._partial[:MAX_LINE_BYTES])
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines]
