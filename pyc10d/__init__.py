"""pyc10d: PyTorch's c10d distributed communication stack, written in Python.

Use it where you would use ``torch.distributed``::

    import pyc10d as dist
"""

from .errors import DistBackendError, DistError, DistNetworkError, DistStoreError, QueueEmptyError
from .rendezvous import register_rendezvous_handler, rendezvous
from .store import FileStore, HashStore, PrefixStore, Store, TCPStore

__version__ = "0.1.0"

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
    "register_rendezvous_handler",
    "rendezvous",
]
