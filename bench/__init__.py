"""Benchmarks for vidx. Each script is runnable on its own; see its module docstring.

Shared helpers (measured subprocess runs, machine info, tables) live in ``bench.common``.
"""
