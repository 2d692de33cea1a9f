"""Shot detection on the frames the indexer already decodes, and shot-aligned clip planning.

Detectors sit behind one small interface (``ShotDetector``): they are fed every
decoded frame, downscaled once, in order, and report cut times, possibly some
frames late. The default combines PySceneDetect's ``ContentDetector`` (hard
cuts, HSV change between frames) with its ``ThresholdDetector`` (fades to and
from black); both are used as libraries, fed with our frames: the file is
decoded once for shots and snippets together.

``OnlineClipPlanner`` turns the growing list of cuts into final clips while
decoding goes on: inside a shot, clips of ``clip_s`` are cut greedily; when
the shot ends, a tail shorter than ``min_clip_s`` joins the clip before it. A
clip is final once no later cut can change it, so snippet frames can be taken
from a short buffer of recent candidate frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

import numpy as np

from indexer.types import ClipSpan

DETECT_WIDTH = 160  # pixels; PySceneDetect itself downscales to about this width by default


@dataclass(frozen=True)
class Cut:
    """A shot boundary: the first frame of the new shot, and how it was found."""

    time_s: float
    frame: int
    transition: str  # "cut" or "fade"


class ShotDetector(Protocol):
    def feed(self, frame_index: int, time_s: float, bgr: np.ndarray) -> list[Cut]: ...

    def finish(self) -> list[Cut]: ...

    def horizon_s(self) -> float:
        """Cuts before this time have all been reported."""
        ...


class SceneDetectShots:
    """PySceneDetect's content (hard cut) and threshold (fade) detectors, fed our frames."""

    def __init__(self, fps: float, threshold: float = 27.0, fade_threshold: float = 12.0,
                 min_scene_len_s: float = 0.6):
        from scenedetect.detectors import ContentDetector, ThresholdDetector

        self.fps = Fraction(fps).limit_denominator(100000) if fps > 0 else Fraction(25)
        min_len = max(1, int(round(min_scene_len_s * float(self.fps))))
        self.content = ContentDetector(threshold=threshold, min_scene_len=min_len)
        self.fade = ThresholdDetector(threshold=fade_threshold, min_scene_len=min_len)
        self.times: list[float] = []  # frame index -> time, to map detector frame numbers back
        self._last = 0
        self._delay = int(self.content.event_buffer_length) + 2

    def _timecode(self, frame_index: int):
        from scenedetect import FrameTimecode

        return FrameTimecode(frame_index, fps=self.fps)

    def _to_cut(self, tc, kind: str) -> Cut:
        n = min(int(tc.frame_num), len(self.times) - 1)
        return Cut(self.times[n], n, kind)

    def feed(self, frame_index: int, time_s: float, bgr: np.ndarray) -> list[Cut]:
        self.times.append(time_s)
        self._last = frame_index
        tc = self._timecode(frame_index)
        cuts = [self._to_cut(c, "cut") for c in self.content.process_frame(tc, bgr)]
        cuts += [self._to_cut(c, "fade") for c in self.fade.process_frame(tc, bgr)]
        return cuts

    def finish(self) -> list[Cut]:
        if not self.times:
            return []
        tc = self._timecode(self._last)
        cuts = [self._to_cut(c, "cut") for c in self.content.post_process(tc)]
        cuts += [self._to_cut(c, "fade") for c in self.fade.post_process(tc)]
        return cuts

    def horizon_s(self) -> float:
        if not self.times:
            return 0.0
        horizon = self.times[max(0, len(self.times) - 1 - self._delay)]
        fade = self.fade.last_fade
        if fade.get("type") == "out" and fade.get("frame") is not None:
            # Inside a fade-out the cut will be placed later, between fade-out and fade-in.
            horizon = min(horizon, self.times[min(int(fade["frame"].frame_num), len(self.times) - 1)])
        return horizon


@dataclass
class OnlineClipPlanner:
    """Final clips from cuts reported while decoding; never straddles a cut.

    Inside a shot, clips of exactly ``clip_s`` are emitted once at least ``clip_s`` after
    them is known to be cut-free; when the shot ends, what is left is divided into
    ``ceil(len / clip_s)`` equal clips. So a clip is at most ``clip_s`` long and, unless
    its whole shot is shorter, at least ``clip_s / 2``; and the planner never looks more
    than about ``2 * clip_s`` back, which bounds the frame buffer of the decoder.
    """

    clip_s: float
    min_shot_s: float = 0.6  # cuts closer than this to a known cut are the same transition
    cuts: list[Cut] = field(default_factory=list)
    _shot_start: float = 0.0
    _emitted_until: float = 0.0  # end of the last emitted clip (>= shot start)
    _next_index: int = 0
    _closed: list[tuple[float, str]] = field(default_factory=list)  # (time, transition) of used cuts

    def add_cuts(self, cuts: list[Cut]) -> None:
        for cut in sorted(cuts, key=lambda c: c.time_s):
            # Two detectors can report one transition (a fade's dip and the content change
            # after it), and a cut can come too late to honour: keep the first usable report.
            if cut.time_s <= self._emitted_until + 1e-6 or \
                    any(abs(cut.time_s - c.time_s) < self.min_shot_s for c in self.cuts):
                continue
            self.cuts.append(cut)

    def _open_cuts(self, until_s: float, inclusive: bool = True) -> list[Cut]:
        return sorted((c for c in self.cuts if self._emitted_until + 1e-6 < c.time_s and
                       (c.time_s <= until_s if inclusive else c.time_s < until_s)), key=lambda c: c.time_s)

    def advance(self, horizon_s: float) -> list[ClipSpan]:
        """Clips that no cut can change any more, given that all cuts before ``horizon_s`` are known."""
        out: list[ClipSpan] = []
        for cut in self._open_cuts(horizon_s):
            out += self._close_shot(cut.time_s, cut.transition)
        while self._emitted_until + 2 * self.clip_s <= horizon_s:
            out.append(self._emit(self._emitted_until, self._emitted_until + self.clip_s))
        return out

    def open_since_s(self) -> float:
        """Start of the earliest time span not yet in an emitted clip."""
        return self._emitted_until

    def _close_shot(self, end_s: float, transition: str) -> list[ClipSpan]:
        start = self._emitted_until
        n = max(1, math.ceil((end_s - start) / self.clip_s - 1e-9))
        step = (end_s - start) / n
        spans = [self._emit(start + i * step, end_s if i == n - 1 else start + (i + 1) * step) for i in range(n)]
        self._shot_start = end_s
        self._closed.append((end_s, transition))
        return spans

    def finish(self, end_s: float) -> list[ClipSpan]:
        out: list[ClipSpan] = []
        for cut in self._open_cuts(end_s, inclusive=False):
            out += self._close_shot(cut.time_s, cut.transition)
        if end_s > self._emitted_until + 1e-6:
            out += self._close_shot(end_s, "end")
            self._closed.pop()
        return out

    def _emit(self, start: float, end: float) -> ClipSpan:
        span = ClipSpan(self._next_index, round(start, 6), round(end, 6))
        self._next_index += 1
        self._emitted_until = end
        return span

    def shots(self, end_s: float) -> list[tuple[float, float, str]]:
        """(start_s, end_s, transition into it) of every shot, after ``finish``."""
        bounds = [(0.0, "start")] + [(t, kind) for t, kind in self._closed if 0.0 < t < end_s]
        return [(a, (bounds[i + 1][0] if i + 1 < len(bounds) else end_s), kind)
                for i, (a, kind) in enumerate(bounds)]
