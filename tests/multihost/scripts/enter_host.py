"""Run a command as another host: name this UTS namespace, then become the command.

Usage: ``enter_host.py HOSTNAME PROGRAM [ARG...]``, under ``unshare --uts`` (so that the hostname
set is the new namespace's own). It refuses to run in its parent's UTS namespace (the test process,
as ``ip netns exec`` and ``unshare`` exec rather than fork), where it would rename the machine.
"""

from __future__ import annotations

import os
import socket
import sys


def main(argv: list[str]) -> None:
    """Set the hostname to ``argv[1]`` and exec ``argv[2:]``."""
    if len(argv) < 3:
        sys.exit(f"usage: {argv[0]} HOSTNAME PROGRAM [ARG...]")
    if os.readlink("/proc/self/ns/uts") == os.readlink(f"/proc/{os.getppid()}/ns/uts"):
        sys.exit("enter_host.py: not in a UTS namespace of its own (run it under unshare --uts)")
    socket.sethostname(argv[1])
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv)
