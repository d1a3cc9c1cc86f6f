"""Read rank, world size and master address from the variables that launchers set.

``env://`` rendezvous uses this module. The families, first match wins per value: explicit
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``: torchrun, ``pyc10d-run``), Open MPI
(``OMPI_COMM_WORLD_*``), MVAPICH (``MV2_COMM_WORLD_*``), MPICH/Intel MPI/Hydra (``PMI_RANK``,
``PMI_SIZE``, ``MPI_LOCALRANKID``) and SLURM (``SLURM_PROCID``, ``SLURM_NTASKS``,
``SLURM_LOCALID``). MPI variables come before SLURM's because an ``mpirun`` inside a SLURM
allocation inherits the allocation's SLURM variables while its own describe the processes.

``MASTER_ADDR``/``MASTER_PORT`` are read as set; under SLURM they default to the first host of
``SLURM_JOB_NODELIST`` (or ``SLURM_NODELIST``) and to ``15000 + the last four digits of
SLURM_JOB_ID`` (the convention of PyTorch Lightning's SLURM support). torch's ``env://`` reads
only the explicit variables.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

SLURM_PORT_BASE = 15000
SLURM_FALLBACK_PORT = 12910  # no SLURM_JOB_ID to derive a port from


class LaunchEnvError(ValueError):
    """A launcher variable is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class _Family:
    """Where one kind of launcher puts the rank, world size and local rank."""

    name: str
    rank: str
    world_size: str
    local_rank: str


FAMILIES: tuple[_Family, ...] = (
    _Family("env", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    _Family(
        "Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"
    ),
    _Family("MVAPICH", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK"),
    _Family("MPICH/Hydra (PMI)", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    _Family("SLURM", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)

SLURM_NODELIST_VARS = ("SLURM_JOB_NODELIST", "SLURM_NODELIST")


def _get(environ: Mapping[str, str], name: str) -> str | None:
    """The value of ``name``, or None when it is unset or empty."""
    value = environ.get(name)
    return value if value else None


def _as_int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise LaunchEnvError(f"environment variable {name} is not an integer: {value!r}") from None


def _detect(environ: Mapping[str, str], field: str) -> tuple[int, str]:
    """``(value, family name)`` of the first family that sets ``field``; LaunchEnvError if none."""
    names = [getattr(family, field) for family in FAMILIES]
    for family, name in zip(FAMILIES, names, strict=True):
        value = _get(environ, name)
        if value is not None:
            return _as_int(name, value), family.name
    raise LaunchEnvError(
        f"environment variable {names[0]} expected, but not set (nor any of {', '.join(names[1:])})"
    )


def detect_rank(environ: Mapping[str, str]) -> tuple[int, str]:
    """This process's global rank and the family it came from (``RANK`` first)."""
    return _detect(environ, "rank")


def detect_world_size(environ: Mapping[str, str]) -> tuple[int, str]:
    """The number of processes and the family it came from (``WORLD_SIZE`` first)."""
    return _detect(environ, "world_size")


def detect_local_rank(environ: Mapping[str, str]) -> tuple[int, str]:
    """This process's rank on its node and the family it came from (``LOCAL_RANK`` first)."""
    return _detect(environ, "local_rank")


def detect_rank_and_world_size(environ: Mapping[str, str]) -> tuple[int, int, str]:
    """``(rank, world_size, source)`` from the launcher variables; LaunchEnvError if missing.

    ``source`` names the family, e.g. ``"SLURM"``, or both when they differ.
    """
    rank, rank_source = detect_rank(environ)
    world_size, size_source = detect_world_size(environ)
    if rank_source == size_source:
        return rank, world_size, rank_source
    return rank, world_size, f"{rank_source} (rank), {size_source} (world size)"


def _slurm_nodelist(environ: Mapping[str, str]) -> str | None:
    for name in SLURM_NODELIST_VARS:
        value = _get(environ, name)
        if value is not None:
            return value
    return None


def detect_master_addr(environ: Mapping[str, str]) -> tuple[str, str]:
    """``MASTER_ADDR``, else the first host of the SLURM node list; with where it came from."""
    value = _get(environ, "MASTER_ADDR")
    if value is not None:
        return value, "MASTER_ADDR"
    nodelist = _slurm_nodelist(environ)
    if nodelist is not None:
        return first_host(nodelist), "SLURM node list"
    raise LaunchEnvError(
        "environment variable MASTER_ADDR expected, but not set "
        f"(and no {' or '.join(SLURM_NODELIST_VARS)} to take the first host from)"
    )


def detect_master_port(environ: Mapping[str, str]) -> tuple[int, str]:
    """``MASTER_PORT``, else (under SLURM) a port derived from ``SLURM_JOB_ID``."""
    value = _get(environ, "MASTER_PORT")
    if value is not None:
        return _as_int("MASTER_PORT", value), "MASTER_PORT"
    job_id = _get(environ, "SLURM_JOB_ID")
    if job_id is not None:
        return slurm_default_port(job_id), "SLURM_JOB_ID"
    if _slurm_nodelist(environ) is not None:
        return SLURM_FALLBACK_PORT, "SLURM default"
    raise LaunchEnvError(
        "environment variable MASTER_PORT expected, but not set (and no SLURM_JOB_ID to derive it)"
    )


def slurm_default_port(job_id: str) -> int:
    """``15000 + int(last four digits of job_id)``: ranks of one job agree, jobs rarely collide."""
    digits = re.sub(r"\D", "", job_id)[-4:]
    if not digits:
        raise LaunchEnvError(f"environment variable SLURM_JOB_ID has no digits: {job_id!r}")
    return SLURM_PORT_BASE + int(digits)


# -- SLURM host lists -----------------------------------------------------------------------------

_PIECE = re.compile(r"\[([^\[\]]*)\]|([^\[\]]+)")


def _split_top_level(text: str) -> list[str]:
    """Split ``text`` at commas that are outside brackets."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise LaunchEnvError(f"unbalanced ']' in SLURM node list {text!r}")
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth != 0:
        raise LaunchEnvError(f"unbalanced '[' in SLURM node list {text!r}")
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def _expand_range(spec: str, text: str) -> list[str]:
    """``"01-03,7"`` -> ``["01", "02", "03", "7"]`` (zero padding kept, as SLURM writes it)."""
    values: list[str] = []
    for item in spec.split(","):
        item = item.strip()
        low, sep, high = item.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise LaunchEnvError(f"bad range {item!r} in SLURM node list {text!r}")
        if not sep:
            values.append(low)
            continue
        width = len(low) if low.startswith("0") else 0
        values.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    return values


def expand_nodelist(text: str) -> Iterator[str]:
    """The host names of a SLURM node list, in order: ``"n[01-02],gpu7"`` -> n01, n02, gpu7.

    Several bracket groups in one name (``rack[1-2]-n[1-3]``) expand as a product, lazily.
    """
    for pattern in _split_top_level(text):
        choices: list[list[str]] = []
        for match in _PIECE.finditer(pattern):
            bracket, literal = match.groups()
            choices.append(_expand_range(bracket, text) if bracket is not None else [literal])
        for parts in itertools.product(*choices):
            yield "".join(parts)


def first_host(text: str) -> str:
    """The first host of a SLURM node list (where SLURM places task 0)."""
    for host in expand_nodelist(text):
        return host
    raise LaunchEnvError(f"SLURM node list {text!r} names no host")
