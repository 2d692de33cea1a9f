"""The progress bar: drawn on terminals (even ones that report no width), silent elsewhere."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import struct
import sys
import termios

from indexer.types import VideoFile, VideoResult, VideoStatus
from pipelines.progress import Progress


@contextlib.contextmanager
def _stderr_is(stream):
    saved, sys.stderr = sys.stderr, stream
    try:
        yield
    finally:
        sys.stderr = saved


def _draw_on_pty(columns: int) -> str:
    """The bar on a pseudo-terminal that is stderr (tqdm measures sys.stderr's screen)."""
    master, slave = os.openpty()
    if columns:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    with os.fdopen(slave, "w") as tty, _stderr_is(tty):
        p = Progress(2, 10.0)
        p.advance(VideoResult(VideoFile("/v/a.mp4", 1, 1), "fp", VideoStatus.FAILED, error="x"))
        p.close()
    # The terminal side is closed: read everything it passed on (then EIO), however slowly the
    # pty hands it over.
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return b"".join(chunks).decode()


def test_bar_on_a_terminal_follows_its_width():
    lines = [line for line in _draw_on_pty(150).replace("\r", "\n").splitlines() if line.strip()]
    assert lines and "indexing" in lines[-1] and "1/2" in lines[-1] and "1 failed" in lines[-1]
    narrow = [line for line in _draw_on_pty(60).replace("\r", "\n").splitlines() if line.strip()]
    assert narrow and max(len(line) for line in narrow) <= 60


def test_bar_on_a_terminal_that_reports_no_width_is_still_drawn():
    # a bare pseudo-terminal is 0x0; tqdm alone printed nothing there
    out = _draw_on_pty(0)
    assert "indexing" in out and "1/2" in out


def test_no_bar_when_stderr_is_not_a_terminal():
    sink = io.StringIO()
    p = Progress(2, 10.0, file=sink)
    p.advance(VideoResult(VideoFile("/v/a.mp4", 1, 1), "fp", VideoStatus.FAILED, error="x"))
    p.close()
    assert sink.getvalue() == ""
