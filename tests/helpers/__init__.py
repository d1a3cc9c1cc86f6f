"""Helpers shared by several test modules (imported by the spawned ranks too)."""
