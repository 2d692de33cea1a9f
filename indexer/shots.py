"""Shot detection on the frames the indexer already decodes, and shot-aligned clip planning.

Detectors sit behind one small interface (``ShotDetector``): they are fed every
decoded frame, downscaled once, in order, and report cut times, possibly some
frames late. The default combines PySceneDetect's ``AdaptiveDetector`` (hard
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

import bisect
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

import numpy as np

from indexer.terminal import stdin_from_devnull
from indexer.types import ClipSpan

DETECT_WIDTH = 160  # pixels; PySceneDetect itself downscales to about this width by default


@dataclass(frozen=True)
class Cut:
    """A shot boundary: the first frame of the new shot, and how it was found."""

    time_s: float
    frame: int
    transition: str  # "cut" or "fade"


class ShotDetector(Protocol):
    def feed(self, frame_index: int, time_s: float, bgr: np.ndarray) -> list[Cut]:
        """``frame_index`` increases but may skip numbers (frames that were not decoded)."""
        ...

    def finish(self) -> list[Cut]: ...

    def horizon_s(self) -> float:
        """Cuts before this time have all been reported."""
        ...


class SceneDetectShots:
    """PySceneDetect's adaptive content (hard cut) and threshold (fade) detectors, fed our frames.

    Frame numbers may skip (only reference frames decoded). Two rules on top of the
    detectors: a fade through black belongs to the fade detector, which places one cut
    mid-way (the content detector also reacts to the picture dimming and coming back, and
    those reports are dropped); and a video that opens on black has no shot before its
    fade-in.
    """

    def __init__(self, fps: float, threshold: float = 3.0, fade_threshold: float = 12.0,
                 min_scene_len_s: float = 0.6):
        with stdin_from_devnull():  # importing scenedetect runs `ffmpeg -v quiet` (indexer/terminal.py)
            from scenedetect.detectors import AdaptiveDetector, ThresholdDetector

        self.fps = Fraction(fps).limit_denominator(100000) if fps > 0 else Fraction(25)
        min_len = max(1, int(round(min_scene_len_s * float(self.fps))))
        # AdaptiveDetector (PySceneDetect's default) compares each frame's change with its
        # neighbours' rather than with a fixed level: a cut into fast motion, where every
        # frame changes a lot, is still found (tests/test_shots.py, bench/shots.py).
        self.content = AdaptiveDetector(adaptive_threshold=threshold, min_scene_len=min_len)
        self.fade = ThresholdDetector(threshold=fade_threshold, min_scene_len=min_len)
        # Fed frames' times and numbers, to map the detectors' frame numbers back to times.
        self.times: list[float] = []
        self.frames: list[int] = []
        self._last = 0
        self._min_len = min_len
        self._dark: tuple[int, int | None] | None = None  # (faded out at, back in at) of the last dark span
        self._out_at: int | None = None  # first dark frame of the current fade-out
        self._prev_bgr: np.ndarray | None = None  # the previous fed frame, for fade crossings
        self._delay = int(self.content.event_buffer_length) + 2

    def _timecode(self, frame_index: int):
        from scenedetect import FrameTimecode

        return FrameTimecode(frame_index, fps=self.fps)

    def _index(self, frame_num: int) -> int:
        """Position in ``times`` of the first fed frame at or after a frame number."""
        return min(bisect.bisect_left(self.frames, frame_num), len(self.times) - 1)

    def _to_cut(self, tc, kind: str) -> Cut:
        j = self._index(int(tc.frame_num))
        return Cut(self.times[j], self.frames[j], kind)

    def _crossing(self, bgr: np.ndarray, frame: int) -> int:
        """First frame past the fade threshold, between the previous fed frame and this one.

        Brightness means are taken only here, at the rare frames where the fade state flips
        (the fade detector computes its own on every frame but does not expose them).
        """
        if len(self.frames) < 2 or self._prev_bgr is None:
            return frame
        mean, prev_mean = float(bgr.mean()), float(self._prev_bgr.mean())
        if mean == prev_mean:
            return frame
        prev = self.frames[-2]
        share = (self.fade.threshold - prev_mean) / (mean - prev_mean)
        return min(frame, max(prev + 1, prev + math.ceil((frame - prev) * share - 1e-9)))

    def _time_of(self, frame: int) -> float:
        """Time of a frame number, interpolated between the fed frames around it."""
        j = self._index(frame)
        if self.frames[j] <= frame or j == 0:
            return self.times[j]
        f0, f1, t0, t1 = self.frames[j - 1], self.frames[j], self.times[j - 1], self.times[j]
        return t0 + (t1 - t0) * (frame - f0) / (f1 - f0)

    def _in_dark(self, frame: int) -> bool:
        if self._dark is None:
            return False
        start, end = self._dark
        return frame >= start and (end is None or frame <= end + self._min_len)

    def feed(self, frame_index: int, time_s: float, bgr: np.ndarray) -> list[Cut]:
        self.times.append(time_s)
        self.frames.append(frame_index)
        self._last = frame_index
        tc = self._timecode(frame_index)
        content = [self._to_cut(c, "cut") for c in self.content.process_frame(tc, bgr)]
        was = self.fade.last_fade["type"]
        fades = [self._to_cut(c, "fade") for c in self.fade.process_frame(tc, bgr)]
        now = self.fade.last_fade
        if now["type"] == "out" and was != "out":
            # Faded out (or dark from the first frame, which the detector marks "out" at once).
            self._dark = (int(now["frame"].frame_num), None)
            self._out_at = self._crossing(bgr, frame_index)
        elif now["type"] == "in" and was == "out" and self._dark is not None:
            if self._dark[0] == self.frames[0]:
                fades = []  # opened on black and faded in: there was no shot before
            elif fades and self._out_at is not None:
                # The detector splits mid-way between the first dark and the first bright frame
                # it saw; with frames skipped those are up to a few frames late, so both are
                # placed where the brightness crossed the threshold between decoded frames.
                in_at = self._crossing(bgr, frame_index)
                split = self._out_at + round((in_at - self._out_at) / 2)
                fades = [Cut(self._time_of(split), split, "fade")]
            self._dark = (self._dark[0], frame_index)
        self._prev_bgr = bgr
        content = [c for c in content if not self._in_dark(c.frame)]
        return content + fades

    def finish(self) -> list[Cut]:
        if not self.times:
            return []
        tc = self._timecode(self._last)
        cuts = [self._to_cut(c, "cut") for c in self.content.post_process(tc)]
        cuts = [c for c in cuts if not self._in_dark(c.frame)]
        cuts += [self._to_cut(c, "fade") for c in self.fade.post_process(tc)]
        return cuts

    def horizon_s(self) -> float:
        if not self.times:
            return 0.0
        horizon = self.times[max(0, len(self.times) - 1 - self._delay)]
        fade = self.fade.last_fade
        if fade.get("type") == "out" and fade.get("frame") is not None:
            # Inside a fade-out the cut will be placed later, between fade-out and fade-in.
            horizon = min(horizon, self.times[self._index(int(fade["frame"].frame_num))])
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
