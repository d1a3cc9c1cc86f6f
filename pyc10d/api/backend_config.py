"""Backend strings as torch reads them: ``BackendConfig`` ("cpu:gloo,cuda:nccl"), the
``is_*_available`` answers of this install, ``get_default_backend_for_device``, and which
builder each device of a group's backend string gets (:func:`plan_group`).

pyc10d serves ``"gloo"`` and ``"pyc10d"`` (its own engine, on CPU tensors and on CUDA tensors
staged through host memory) and any backend registered with ``Backend.register_backend``. It
has no NCCL, MPI, UCC or XCCL: a group naming one fails as torch built without it does
(``RuntimeError: Distributed package doesn't have NCCL built in``), before anything connects.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .state import (
    NOT_PROVIDED,
    PYC10D,
    Backend,
    UnknownBackendError,
    backend_name,
    unavailable,
)

log = logging.getLogger(__name__)

_CONFIG_FORMAT = (
    "The custom backend string argument is invalid: {backend}.\n"
    "                Custom backend string is an experimental feature where the backend "
    "string must be in the format:\n"
    '                "<device_type1>:<backend1>,<device_type2>:<backend2>...". '
    "e.g. 'cpu:gloo,cuda:nccl'"
)
"""torch's explanation appended to every malformed ``device:backend`` string error."""

_GAP = " " * 38
"""The run of spaces inside torch's two messages below (a line continuation in its source)."""

_OWN_ENGINE = (Backend.GLOO, PYC10D)
"""Backend names that pyc10d's own engine serves."""


def is_mpi_available() -> bool:
    """False: pyc10d has no MPI backend (torch's ``is_mpi_available``)."""
    return False


def is_nccl_available() -> bool:
    """False: pyc10d has no NCCL backend, whatever torch was built with."""
    return False


def is_gloo_available() -> bool:
    """True: ``"gloo"`` is served by pyc10d's own engine (torch's ``is_gloo_available``)."""
    return True


def is_ucc_available() -> bool:
    """False: pyc10d has no UCC backend (torch's ``is_ucc_available``)."""
    return False


def is_xccl_available() -> bool:
    """False: pyc10d has no XCCL backend (torch's ``is_xccl_available``)."""
    return False


_AVAILABILITY: dict[str, Callable[[], bool]] = {
    Backend.MPI: is_mpi_available,
    Backend.NCCL: is_nccl_available,
    Backend.GLOO: is_gloo_available,
    Backend.UCC: is_ucc_available,
    Backend.XCCL: is_xccl_available,
}


def _single_available(name: str) -> bool:
    """torch's check of one backend name: its ``is_<name>_available()``, else registered."""
    lower = str(name).lower()
    check = _AVAILABILITY.get(lower)
    return check() if check is not None else lower in Backend.backend_list


def is_backend_available(backend: str) -> bool:
    """Whether ``backend`` can make a group here (torch's ``is_backend_available``).

    A ``"device:backend,..."`` string is available when each of its backends is; a plain name
    when its ``is_<name>_available()`` says so, or (no such function) when it is in
    ``Backend.backend_list`` (``"pyc10d"``, ``"undefined"``, registered backends).
    """
    if ":" in backend.lower():
        names = BackendConfig(backend).get_device_backend_map().values()
        return all(_single_available(str(name)) for name in names)
    return _single_available(backend)


def _accelerator_type() -> str:
    """The machine's accelerator device type, ``"cpu"`` when there is none (as torch)."""
    accelerator = torch.accelerator.current_accelerator()
    return "cpu" if accelerator is None else accelerator.type


def get_default_backend_for_device(device: str | torch.device) -> str:
    """The default backend of ``device``'s type in ``Backend.default_device_backend_map``
    (torch's); ValueError, torch's message, for a device type without one."""
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    backend = Backend.default_device_backend_map.get(device_type)
    if backend is None:
        raise ValueError(f"Default backend not registered for device : {device}")
    return backend


class BackendConfig:
    """Which backend serves each device type, read from a backend string as torch does.

    ``"undefined"``: the default backend of the machine's accelerator (``cpu`` when none);
    a name in ``Backend.backend_list``: that backend on each device of its
    ``Backend.backend_capability``; ``"<device>:<backend>,..."``: as written (torch's
    ValueError for a pair that is not ``device:backend``, or a device named twice); any other
    name: torch's warning, and that backend on ``cpu``, ``cuda`` and ``xpu``.
    ``str(config)`` is ``"cpu:gloo,cuda:gloo"``, torch's form.
    """

    def __init__(self, backend: str) -> None:
        self.device_backend_map: dict[str, str] = {}
        text = str(backend)
        lower = text.lower()
        if text == Backend.UNDEFINED:
            self._undefined()
        elif lower in Backend.backend_list:
            name = backend_name(text)
            self.device_backend_map = dict.fromkeys(Backend.backend_capability[lower], name)
        elif ":" in lower:
            self._parse_pairs(text)
        else:
            warnings.warn(
                f"Device capability of {text} unknown, assuming `cpu` and `cuda`. You can "
                "specify it in `device:backend` format in `init_process_group` call.",
                stacklevel=2,
            )
            self.device_backend_map = dict.fromkeys(("cpu", "cuda", "xpu"), backend_name(text))
        log.debug("Using backend config: %s", self.device_backend_map)

    def _undefined(self) -> None:
        device_type = _accelerator_type()
        try:
            default = Backend.default_device_backend_map[device_type]
        except KeyError:
            raise ValueError(
                f"We detected accelerator {device_type} on your machine. But we don't know "
                "which communication backend to use for this accelerator. Please specify the "
                "`backend` argument in the `init_process_group` call."
            ) from None
        self.device_backend_map[device_type] = backend_name(default)

    def _parse_pairs(self, text: str) -> None:
        explain = _CONFIG_FORMAT.format(backend=text)
        for pair in text.lower().split(","):
            parts = pair.split(":")
            if len(parts) != 2:
                raise ValueError(f"Invalid device:backend pairing:{_GAP}{pair}. {explain}")
            device, name = parts
            if device in self.device_backend_map:
                raise ValueError(
                    f"Duplicate device type {device}{_GAP}in backend string: {name}. {explain}"
                )
            self.device_backend_map[device] = backend_name(name)

    def __repr__(self) -> str:
        """``"device:backend"`` pairs separated by commas (torch's form)."""
        return ",".join(f"{device}:{name}" for device, name in self.device_backend_map.items())

    def get_device_backend_map(self) -> dict[str, str]:
        """The backend of each device type."""
        return self.device_backend_map


@dataclass
class GroupPlan:
    """How to build a group from its backend string: the plugin to call (None: pyc10d's own
    engine), the backend of each device type, and ``str(BackendConfig(...))``."""

    plugin: Any
    device_backends: dict[str, str]
    config: str

    @property
    def backends(self) -> set[str]:
        """The backend names the string names."""
        return set(self.device_backends.values())


def _check_device(device: str) -> None:
    """torch's RuntimeError ("Expected one of cpu, cuda, ... device type at start of device
    string: abc") for a device type torch does not know."""
    torch.device(device)


def _builder(name: str) -> Any:
    """The plugin of ``name`` (None: pyc10d's engine); torch's error when there is none."""
    if name in _OWN_ENGINE:
        return None
    if name in NOT_PROVIDED:
        raise unavailable(name)
    plugin = Backend._plugins.get(name.upper())
    if plugin is None:
        raise UnknownBackendError(f"Unknown c10d backend type {name.upper()}")
    return plugin


def plan_group(backend: str) -> GroupPlan:
    """Check ``backend`` (a name or a ``device:backend`` string) as torch's group creation does
    and say how to build its group; every error is raised before anything connects.

    torch's errors: "Unknown backend type foo" for an unknown plain name, the ValueErrors of
    :class:`BackendConfig` for a malformed string, torch's RuntimeError for an unknown device
    type, "Distributed package doesn't have NCCL built in" (also MPI, XCCL) and
    "Unknown c10d backend type UCC" for backends pyc10d does not provide. The first device
    served by a registered backend builds the group, as in torch; otherwise pyc10d's engine.
    """
    text = str(backend)
    simple = "," not in text and ":" not in text
    if simple and text.lower() not in Backend.backend_type_map:
        raise UnknownBackendError(f"Unknown backend type {text}")
    config = BackendConfig(text)
    mapping = config.get_device_backend_map()
    builders = []
    for device, name in mapping.items():
        _check_device(device)
        builders.append(_builder(str(name)))
    plugin = next((b for b in builders if b is not None), None)
    return GroupPlan(plugin, {d: str(b) for d, b in mapping.items()}, str(config))
