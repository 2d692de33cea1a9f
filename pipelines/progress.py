"""The progress bar of long jobs, on stderr (stdout carries results only)."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from indexer.types import VideoResult, VideoStatus


class Progress:
    """Videos done of total with an ETA, plus video-seconds indexed and the realtime factor."""

    def __init__(self, total_videos: int, expected_seconds: float, enabled: bool = True,
                 file: TextIO | None = None):
        self.enabled = enabled and total_videos > 0
        self.started = time.monotonic()
        self.video_seconds = 0.0
        self.failed = 0
        self._live: dict[str, float] = {}  # path -> seconds decoded so far, of videos still running
        self._shown_at = 0.0
        self._bar = None
        if self.enabled:
            from tqdm import tqdm

            file = file or sys.stderr
            fixed = _fixed_size(file)
            self._bar = tqdm(total=total_videos, unit="video", file=file, dynamic_ncols=fixed is None,
                             ncols=fixed and fixed[0], nrows=fixed and fixed[1], desc="indexing",
                             mininterval=0.5, disable=None)

    def advance(self, result: VideoResult) -> None:
        self._live.pop(result.file.path, None)
        if result.probe and result.status == VideoStatus.INDEXED:
            self.video_seconds += result.probe.duration_s
        if result.status == VideoStatus.FAILED:
            self.failed += 1
        if self._bar is not None:
            self._set_postfix()
            self._bar.update(1)

    def note_position(self, path: str, position_s: float) -> None:
        """A video still running has been decoded up to ``position_s``: the video-seconds and
        realtime figures move while a long file decodes, instead of jumping when it is done."""
        self._live[path] = max(self._live.get(path, 0.0), position_s)
        now = time.monotonic()
        if self._bar is not None and now - self._shown_at >= 0.5:
            self._set_postfix()
            self._bar.refresh()
            self._shown_at = now

    def _set_postfix(self) -> None:
        seconds = self.video_seconds + sum(self._live.values())
        elapsed = max(time.monotonic() - self.started, 1e-6)
        self._bar.set_postfix_str(f"{seconds:,.0f} video-s, {seconds / elapsed:.1f}x realtime, "
                                  f"{self.failed} failed", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _fixed_size(file: TextIO) -> tuple[int, int] | None:
    """None (follow the terminal's size) unless the terminal reports a size of 0, as a bare
    pseudo-terminal does (``kubectl exec -t``, ``script``): tqdm then draws nothing at all,
    so draw 100 columns wide (and tell it the screen has rows)."""
    try:
        size = os.get_terminal_size(file.fileno())
    except (OSError, ValueError, AttributeError):  # not a terminal: tqdm disables itself
        return None
    return None if size.columns > 0 and size.lines > 0 else (size.columns or 100, size.lines or 24)
