"""Keeping the processes vidx starts away from the user's terminal.

A process outside the terminal's foreground process group that touches the terminal is
stopped by the kernel (SIGTTIN/SIGTTOU) and waits forever: Ray's workers run in their own
process groups, and ``vidx index ... &`` puts all of vidx in the background. Libraries start
child processes that inherit stdin: PySceneDetect runs ``ffmpeg -v quiet`` when it is
imported, and ffmpeg configures a terminal on its stdin for its "press q" prompt. So, while
such children are started, stdin is /dev/null.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def stdin_is_terminal() -> bool:
    try:
        return os.isatty(0)
    except (OSError, ValueError):
        return False


@contextmanager
def stdin_from_devnull() -> Iterator[None]:
    """Within the block, file descriptor 0 reads /dev/null when it was a terminal (children
    started meanwhile inherit /dev/null); it is restored afterwards."""
    if not stdin_is_terminal():
        yield
        return
    saved = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(null)
