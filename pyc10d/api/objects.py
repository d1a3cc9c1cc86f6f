"""Placeholder until filled in this session."""

__all__: list[str] = []
