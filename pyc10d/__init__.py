"""pyc10d: PyTorch's c10d distributed communication stack, written in Python.

Use it where you would use ``torch.distributed``::

    import pyc10d as dist
"""

import sys as _sys

from . import api, data, dist2, futures, nn, torch_backend
from .api import *  # noqa: F403
from .api import __all__ as _api_all
from .api import flight_recorder
from .core.errors import (
    DistBackendError,
    DistError,
    DistNetworkError,
    DistStoreError,
    QueueEmptyError,
)
from .nn.parallel import DistributedDataParallel
from .process_group import *  # noqa: F403
from .process_group import __all__ as _process_group_all
from .rendezvous import register_rendezvous_handler, rendezvous
from .store import FileStore, HashStore, PrefixStore, Store, TCPStore

__version__ = "0.1.0"

# ``torch.distributed.distributed_c10d``'s counterpart (torch's tests reach private helpers such
# as ``c10d._get_default_group()`` through it): the API package, importable under that name too.
distributed_c10d = api
_sys.modules.setdefault(f"{__name__}.distributed_c10d", api)
# ``pyc10d.flight_recorder`` (dumps of the flight recorder) is importable under that name too
_sys.modules.setdefault(f"{__name__}.flight_recorder", flight_recorder)

torch_backend.register()  # torch.distributed.init_process_group("pyc10d") works from here on

__all__ = [
    "DistBackendError",
    "DistError",
    "DistNetworkError",
    "DistStoreError",
    "FileStore",
    "HashStore",
    "PrefixStore",
    "QueueEmptyError",
    "Store",
    "TCPStore",
    "DistributedDataParallel",
    "data",
    "dist2",
    "flight_recorder",
    "futures",
    "nn",
    "register_rendezvous_handler",
    "rendezvous",
    *_api_all,
    *_process_group_all,
]
