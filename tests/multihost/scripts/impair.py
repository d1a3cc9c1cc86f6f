"""A userspace link impairer: delay and drop Ethernet frames, for kernels without ``sch_netem``.

Usage: ``impair.py DELAY_MS LOSS_PCT SEED MAX_S TAP [TAP...]``. It creates the TAP devices (in
its network namespace), brings them up and prints ``READY``; ``tc`` filters (set up by the test,
see ``conftest.Topology.impair``) then redirect what each host sends into its TAP, and what is
written to a TAP out to that host. In between, this process is a learning switch: each frame
read from a TAP is dropped with probability ``LOSS_PCT``/100 (from ``random.Random(SEED)``), or
written, ``DELAY_MS`` later, to the TAP of the host owning its destination MAC (to all others
for broadcasts and unknown destinations), in order. It prints ``STATS frames=N dropped=M``
twice a second and exits after ``MAX_S`` seconds (a safety net: the test kills it first).
"""

from __future__ import annotations

import fcntl
import math
import os
import random
import select
import struct
import subprocess
import sys
import time
from collections import deque

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
READ_BURST = 64  # frames read from one TAP per wakeup
REPORT_S = 0.5


def open_tap(name: str) -> int:
    """A non-blocking descriptor of a new TAP device ``name`` (no packet-info header), up."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    return fd


class Switch:
    """The learning switch with delay and loss between the TAPs."""

    def __init__(self, fds: list[int], delay_s: float, loss: float, seed: int) -> None:
        self.fds = fds
        self.delay_s = delay_s
        self.loss = loss
        self.rng = random.Random(seed)
        self.ports: dict[bytes, int] = {}  # source MAC -> the TAP it came from
        self.queue: deque[tuple[float, int, bytes]] = deque()  # due time, out port, frame
        self.frames = 0
        self.dropped = 0

    def receive(self, port: int) -> None:
        """Read the frames waiting on ``port``; queue each (or drop it)."""
        for _ in range(READ_BURST):
            try:
                frame = os.read(self.fds[port], 65536)
            except BlockingIOError:
                return
            self.frames += 1
            if self.rng.random() * 100 < self.loss:
                self.dropped += 1
                continue
            dst, src = frame[:6], frame[6:12]
            self.ports[src] = port
            out = self.ports.get(dst) if not dst[0] & 1 else None  # multicast bit
            due = time.monotonic() + self.delay_s
            targets = [out] if out is not None else range(len(self.fds))
            for target in targets:
                if target != port:
                    self.queue.append((due, target, frame))

    def flush(self) -> float | None:
        """Write the frames that are due; seconds until the next one (None if none)."""
        now = time.monotonic()
        while self.queue and self.queue[0][0] <= now:
            _, target, frame = self.queue.popleft()
            try:
                os.write(self.fds[target], frame)
            except OSError:
                self.dropped += 1  # the host's side is down or full: the frame is lost
        return self.queue[0][0] - now if self.queue else None


def main(argv: list[str]) -> None:
    """Open the TAPs, say ``READY``, switch frames until ``MAX_S`` has passed."""
    delay_ms, loss_pct, seed, max_s = float(argv[1]), float(argv[2]), int(argv[3]), float(argv[4])
    fds = [open_tap(name) for name in argv[5:]]
    switch = Switch(fds, delay_ms / 1000, loss_pct, seed)
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    by_fd = {fd: port for port, fd in enumerate(fds)}
    print("READY", flush=True)
    end = time.monotonic() + max_s
    report = time.monotonic() + REPORT_S
    wait = REPORT_S
    while time.monotonic() < end:
        for fd, _ in poller.poll(max(0, math.ceil(wait * 1000))):
            switch.receive(by_fd[fd])
        due = switch.flush()
        if time.monotonic() >= report:
            print(f"STATS frames={switch.frames} dropped={switch.dropped}", flush=True)
            report = time.monotonic() + REPORT_S
        wait = min(REPORT_S, due if due is not None else REPORT_S)


if __name__ == "__main__":
    main(sys.argv)
