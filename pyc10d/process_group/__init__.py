"""Layer 4 — the process group: validation with torch's messages, Work/Future, the async engine,
timeouts and failure detection."""

from ..core.reduce_op import ReduceOp
from .options import *  # noqa: F403
from .options import __all__ as _option_classes
from .process_group import ProcessGroup
from .work import Work

__all__ = ["ProcessGroup", "ReduceOp", "Work", *_option_classes]
