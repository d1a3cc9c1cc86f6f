"""Model averaging (torch's ``torch.distributed.algorithms.model_averaging``).

:mod:`.averagers` (``ModelAverager``, ``PeriodicModelAverager``) and
:mod:`.hierarchical_model_averager` (``HierarchicalModelAverager``) average the parameters
periodically after the optimizer step; :mod:`.utils` has the averaging itself. Paired with the
post-local SGD hook or :class:`pyc10d.optim.PostLocalSGDOptimizer`, they run post-local SGD.
"""

from . import averagers, hierarchical_model_averager, utils

__all__ = ["averagers", "hierarchical_model_averager", "utils"]
