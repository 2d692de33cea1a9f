"""Cutting a video's timeline into clips and choosing TSN snippet times.

Every instant of ``[0, duration)`` belongs to exactly one clip. The timeline is
first split at shot cuts (none until a shot detector supplies them), then each
shot is divided into ``ceil(len / clip_s)`` equal clips, so no clip is longer
than ``clip_s``, none straddles a cut, and there is no stubby tail clip. Each
clip is split into K equal segments and the snippet of a segment is taken at
its centre (TSN's sparse sampling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from indexer.types import ClipSpan

# Cuts closer than this to a boundary are ignored: they would make empty clips.
_MIN_SPAN_S = 1e-3


def plan_clips(duration_s: float, clip_s: float, cuts_s: Sequence[float] = ()) -> tuple[ClipSpan, ...]:
    """Split ``[0, duration_s)`` into clips of at most ``clip_s`` that never straddle a cut."""
    if duration_s <= 0:
        return ()
    bounds = [0.0]
    for cut in sorted(cuts_s):
        if _MIN_SPAN_S < cut < duration_s - _MIN_SPAN_S and cut - bounds[-1] > _MIN_SPAN_S:
            bounds.append(float(cut))
    bounds.append(float(duration_s))

    spans: list[ClipSpan] = []
    for shot_start, shot_end in zip(bounds, bounds[1:]):
        n = max(1, math.ceil((shot_end - shot_start) / clip_s - 1e-9))
        step = (shot_end - shot_start) / n
        for i in range(n):
            start = shot_start + i * step
            end = shot_end if i == n - 1 else shot_start + (i + 1) * step
            spans.append(ClipSpan(index=len(spans), start_s=round(start, 6), end_s=round(end, 6)))
    return tuple(spans)


def snippets_for(span: ClipSpan, k: int, clip_s: float | None) -> int:
    """How many TSN segments a clip gets: K for a full ``clip_s`` clip, proportionally fewer
    (at least 1) for a clip that a shot cut made shorter, so sampling density stays one
    snippet per ``clip_s / K`` seconds instead of rising in fast-cut footage."""
    if not clip_s:
        return k
    return max(1, min(k, math.ceil(span.duration_s / (clip_s / k) - 1e-6)))


def snippet_times(span: ClipSpan, k: int) -> tuple[float, ...]:
    """Centre times of the K equal segments of ``span``."""
    seg = span.duration_s / k
    return tuple(span.start_s + (i + 0.5) * seg for i in range(k))
