"""Layer 0 — the shared vocabulary every other layer speaks: errors, timeouts and deadlines,
reduce ops, dtypes, message tags and byte views of tensors. Imports nothing from pyc10d above it."""
