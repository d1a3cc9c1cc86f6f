"""Layer 6 — distributed optimizers (torch's ``torch.distributed.optim``).

:class:`PostLocalSGDOptimizer` wraps a local optimizer and averages the parameters with a model
averager after each step (post-local SGD).
"""

from .post_localSGD_optimizer import PostLocalSGDOptimizer

__all__ = ["PostLocalSGDOptimizer"]
