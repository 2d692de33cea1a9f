"""The progress bar: drawn on terminals (even ones that report no width), silent elsewhere."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import struct
import sys
import termios
import time

from indexer.types import VideoFile, VideoProbe, VideoResult, VideoStatus
from pipelines.progress import Progress


@contextlib.contextmanager
def _stderr_is(stream):
    saved, sys.stderr = sys.stderr, stream
    try:
        yield
    finally:
        sys.stderr = saved


def _fail_one(p: Progress) -> None:
    p.advance(VideoResult(VideoFile("/v/a.mp4", 1, 1), "fp", VideoStatus.FAILED, error="x"))


def _draw_on_pty(columns: int, steps=_fail_one) -> str:
    """The bar on a pseudo-terminal that is stderr (tqdm measures sys.stderr's screen)."""
    master, slave = os.openpty()
    if columns:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    with os.fdopen(slave, "w") as tty, _stderr_is(tty):
        p = Progress(2, 10.0)
        steps(p)
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


def test_video_seconds_move_while_a_long_file_decodes():
    """A long file (or a slow one: 8K on a small machine) shows its decoded seconds as it goes,
    not only when it is done; once done, its full duration counts, once."""
    probe = VideoProbe(container="mp4", codec="h264", duration_s=300.0, duration_source="stream", start_time_s=0.0,
                       avg_fps=25.0, base_fps=25.0, variable_frame_rate=False, n_frames=7500, width=64, height=48,
                       display_width=64, display_height=48, rotation_deg=0, sample_aspect_ratio=1.0,
                       has_audio=False, video_stream_index=0)

    def steps(p: Progress) -> None:
        p.note_position("/v/long.mp4", 125.0)
        p.note_position("/v/long.mp4", 60.0)  # an older position (a heartbeat behind a chunk) never goes back
        time.sleep(0.6)
        p.note_position("/v/long.mp4", 126.0)
        p.advance(VideoResult(VideoFile("/v/long.mp4", 1, 1), "fp", VideoStatus.INDEXED, probe=probe))

    lines = [line for line in _draw_on_pty(150, steps).replace("\r", "\n").splitlines() if line.strip()]
    assert any("0/2" in line and "125 video-s" in line for line in lines), lines
    assert not any("60 video-s" in line for line in lines)
    assert "1/2" in lines[-1] and "300 video-s" in lines[-1], lines
