"""Layer 6 — pyc10d as a ``torch.distributed`` backend: ``init_process_group("pyc10d")``.

Registration happens when pyc10d is imported, and also when torch itself is imported if pyc10d
is installed (pyc10d declares a ``torch.backends`` entry point, which torch loads at import unless
``TORCH_DEVICE_BACKEND_AUTOLOAD=0``). So a torchrun script needs no change beyond the backend
string. ``register()`` is idempotent.
"""

from __future__ import annotations

from .register import BACKEND_NAME, create_process_group, is_registered, register

__all__ = ["BACKEND_NAME", "create_process_group", "is_registered", "register"]
