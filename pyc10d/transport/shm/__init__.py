"""Shared-memory transport (same host).

Modules: :mod:`.arena` (the per-group arena the collectives run in), :mod:`.ring`, :mod:`.send`
and :mod:`.receiver` (byte rings for point-to-point messages) and :mod:`.setup` (finding the
peers on this host and exchanging segments).
"""
