"""Errors :func:`pyc10d.testing.spawn` raises; AssertionErrors, so pytest reports test failures."""

from __future__ import annotations


class RankFailedError(AssertionError):
    """One or more ranks raised or died; the message starts with the first failure seen.

    ``rank`` is that first failing rank, ``failures`` maps each failed rank to its report (a
    traceback, or how the process exited), in the order the failures were seen.
    """

    def __init__(self, message: str, failures: dict[int, str]) -> None:
        super().__init__(message)
        self.failures = failures
        self.rank = next(iter(failures))


class RankTimeoutError(AssertionError):
    """Ranks were still running when the timeout passed; ``stacks`` maps each to its stack dump."""

    def __init__(self, message: str, timeout: float, stacks: dict[int, str]) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.stacks = stacks
        self.ranks = sorted(stacks)
