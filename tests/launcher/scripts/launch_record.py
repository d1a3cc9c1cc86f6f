"""Run by ``pyc10d-run`` in tests/launcher/test_log_dir.py: a worker whose ``main`` is wrapped
in torch's ``@record``, which writes its exception to ``TORCHELASTIC_ERROR_FILE``; rank 1 fails.
"""

import os

from torch.distributed.elastic.multiprocessing.errors import record


@record
def main() -> None:
    rank = int(os.environ["RANK"])
    print(f"error file of rank {rank}: {os.environ.get('TORCHELASTIC_ERROR_FILE')}", flush=True)
    if rank == 1:
        raise ValueError(f"recorded failure of rank {rank}")


if __name__ == "__main__":
    main()
