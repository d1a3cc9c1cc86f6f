"""Run by ``pyc10d-run --auth`` in tests/launcher/test_launcher.py: all_reduce over an
authenticated job, and check that a connection without the key is refused by its store."""

import hashlib
import json
import os
import socket
import sys
from pathlib import Path

import torch

import pyc10d as dist
from pyc10d.store.tcp.protocol import Op, decode, encode


def refusal(host: str, port: int) -> str:
    """What the job's store answers a client that skips authentication."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(encode(Op.PING, 1))
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    frame = decode(data, 0)
    return frame[3][0].decode() if frame and frame[3] else repr(data)


def main(out: Path) -> None:
    key = os.environ.get("PYC10D_AUTH_KEY", "")
    dist.init_process_group()  # env://, from the launcher's variables
    rank = dist.get_rank()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    record = {
        "sum": value.item(),
        "key": hashlib.sha256(key.encode()).hexdigest() if key else None,
        "refused": refusal(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
