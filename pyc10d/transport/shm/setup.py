"""Setting up the shared-memory rings of a group through the store.

1. Every rank publishes its host identity (hostname and kernel boot id) under
   ``shm/host/{rank}``; ranks with equal identities share a host.
2. Every rank creates one ring segment per same-host peer (the peer produces, it consumes), binds
   a doorbell socket in the abstract UNIX namespace, and publishes both names under
   ``shm/seg/{rank}``. Names carry ``pyc10d``, a random nonce and the pair.
3. Every rank attaches its outgoing rings and says so under ``shm/att/{consumer}/{producer}``.
4. Once all its producers have attached, a consumer unlinks its segments: from then on nothing is
   left in ``/dev/shm``, whatever happens to the processes.

Ring segments are created readable by their owner only (mode 0600), so only processes of the same
user can map them. The shared-memory arena (:mod:`.arena`) instead passes segment descriptors
over abstract UNIX sockets, which any local process can send to: :func:`descriptor_note` and
:func:`descriptor_sender` make those datagrams carry, when a key is set (:mod:`pyc10d.core.auth`),
an HMAC only a process that knows the key can compute, and reject the others.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import secrets
import socket
import struct

from ...core.auth import PROOF_SIZE, mac
from ...core.errors import DistBackendError, DistStoreError
from ...core.timeouts import Deadline, format_ms
from ...store import Store
from .ring import Ring

HOST_KEY = "shm/host/{}"
SEG_KEY = "shm/seg/{}"
ATTACHED_KEY = "shm/att/{}/{}"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
HOST_ID_ENV = "PYC10D_HOST_ID"
NOTE_RANK = struct.Struct("<q")  # the sender's rank, first in a descriptor datagram
NOTE_LABEL = b"pyc10d-shm-descriptor"


def descriptor_note(
    key: bytes | None, rank: int, sender_bell: bytes, receiver_bell: bytes
) -> bytes:
    """The datagram that goes with a segment descriptor from ``rank`` (sent with SCM_RIGHTS):
    the rank, then (with a key) an HMAC binding it to both doorbell addresses, which are random
    for each setup, so that it is good for this pair of ranks of this setup only."""
    note = NOTE_RANK.pack(rank)
    if key is None:
        return note
    return note + mac(key, NOTE_LABEL, note, sender_bell, receiver_bell)


def descriptor_sender(
    key: bytes | None, note: bytes, receiver_bell: bytes, bells: dict[int, bytes]
) -> int | None:
    """The rank among ``bells`` (peer rank -> its doorbell address) that sent ``note`` to the
    doorbell ``receiver_bell``, or None when the note is malformed, names no peer, or (with a
    key) carries a wrong HMAC: then its descriptor must be closed unused."""
    if len(note) != NOTE_RANK.size + (PROOF_SIZE if key is not None else 0):
        return None
    rank = NOTE_RANK.unpack_from(note)[0]
    if rank not in bells:
        return None
    if key is not None:
        expected = mac(key, NOTE_LABEL, note[: NOTE_RANK.size], bells[rank], receiver_bell)
        if not hmac.compare_digest(note[NOTE_RANK.size :], expected):
            return None
    return rank


def host_identity() -> str:
    """This machine's identity: hostname, boot id and network namespace (equal on one host, one
    boot, one namespace: the doorbells and descriptor passing are abstract UNIX sockets, which
    belong to a network namespace).

    ``PYC10D_HOST_ID``, when set, replaces it: ranks of one machine that set different values
    behave as if on different hosts (to test mixed groups on one machine).
    """
    override = os.environ.get(HOST_ID_ENV)
    if override:
        return override
    try:
        with open(BOOT_ID) as f:
            boot = f.read().strip()
    except OSError:
        boot = "?"
    try:
        netns = os.readlink("/proc/self/ns/net")
    except OSError:
        netns = "?"
    return f"{socket.gethostname()}/{boot}/{netns}"


def wait_for_keys(store: Store, keys: list[str], deadline: Deadline, rank: int, what: str) -> None:
    """Wait for ``keys`` until ``deadline``; DistBackendError naming the absent ones."""
    remaining = deadline.remaining()
    try:
        store.wait(keys, 0 if math.isinf(remaining) else max(remaining, 0.001))
    except DistStoreError as exc:
        absent = [k for k in keys if not store.check([k])]
        raise DistBackendError(
            f"shared-memory setup on rank {rank} timed out after {format_ms(deadline.seconds)} "
            f"waiting for {what} ({absent})"
        ) from exc


def same_host_peers(store: Store, rank: int, world_size: int, deadline: Deadline) -> list[int]:
    """The other ranks on this rank's host (every rank must call this)."""
    me = host_identity()
    store.set(HOST_KEY.format(rank), me)
    keys = [HOST_KEY.format(p) for p in range(world_size)]
    wait_for_keys(store, keys, deadline, rank, "host identities")
    ids = [v.decode() for v in store.multi_get(keys)]
    return [p for p in range(world_size) if p != rank and ids[p] == me]


class ShmSetup:
    """The rings and the doorbell of one rank; ``close`` releases whatever was made."""

    def __init__(self) -> None:
        self.doorbell: socket.socket | None = None
        self.incoming: dict[int, Ring] = {}
        self.outgoing: dict[int, tuple[Ring, bytes]] = {}

    def build(self, store: Store, rank: int, peers: list[int], deadline: Deadline) -> None:
        """Create, exchange, attach and unlink the rings to and from ``peers``."""
        nonce = secrets.token_hex(6)
        bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.doorbell = bell
        bell.bind(f"\0pyc10d-{nonce}-r{rank}".encode())
        names = {}
        for src in peers:
            name = f"pyc10d-{nonce}-{src}to{rank}"
            self.incoming[src] = Ring.create(name)
            names[src] = name
        info = {"bell": bell.getsockname().hex(), "segs": {str(k): v for k, v in names.items()}}
        store.set(SEG_KEY.format(rank), json.dumps(info))
        wait_for_keys(store, [SEG_KEY.format(p) for p in peers], deadline, rank, "peers' segments")
        for dst in peers:
            theirs = json.loads(store.get(SEG_KEY.format(dst)))
            ring = Ring.attach(theirs["segs"][str(rank)])
            self.outgoing[dst] = (ring, bytes.fromhex(theirs["bell"]))
            store.set(ATTACHED_KEY.format(dst, rank), "1")
        keys = [ATTACHED_KEY.format(rank, p) for p in peers]
        wait_for_keys(store, keys, deadline, rank, "peers to attach")
        for ring in self.incoming.values():
            ring.unlink()

    def close(self) -> None:
        """Unlink and unmap every ring and close the doorbell; idempotent."""
        for ring in self.incoming.values():
            ring.close()
        for ring, _ in self.outgoing.values():
            ring.close()
        self.incoming.clear()
        self.outgoing.clear()
        if self.doorbell is not None:
            self.doorbell.close()
            self.doorbell = None
