"""Unit tests for indexer.clips: clip planning covers the timeline exactly; TSN snippet times."""

from __future__ import annotations

import math
import random

import pytest

from indexer.clips import plan_clips, snippet_times
from indexer.types import ClipSpan

EPS = 1e-6  # spans are rounded to microseconds


def check_plan(spans, duration, clip_s, cuts=()):
    """Every invariant the module docstring promises."""
    assert spans, "a positive duration always gives at least one clip"
    assert [s.index for s in spans] == list(range(len(spans)))
    assert spans[0].start_s == 0.0
    assert spans[-1].end_s == pytest.approx(duration, abs=EPS)
    for a, b in zip(spans, spans[1:]):
        assert a.end_s == b.start_s, "no gap and no overlap between consecutive clips"
    for s in spans:
        assert s.end_s > s.start_s
        assert s.duration_s <= clip_s + EPS
    effective = [c for c in cuts if 1e-3 < c < duration - 1e-3]
    for cut in effective:
        for s in spans:
            assert not (s.start_s < cut - EPS and s.end_s > cut + EPS), f"{s} straddles cut {cut}"


@pytest.mark.parametrize("duration,clip_s,expected", [
    (10.0, 5.0, [(0.0, 5.0), (5.0, 10.0)]),
    (10.0, 10.0, [(0.0, 10.0)]),
    (10.0, 20.0, [(0.0, 10.0)]),
    (11.0, 5.0, [(0.0, 3.666667), (3.666667, 7.333333), (7.333333, 11.0)]),
    (6.006, 2.0, [(0.0, 1.5015), (1.5015, 3.003), (3.003, 4.5045), (4.5045, 6.006)]),
    (0.4, 5.0, [(0.0, 0.4)]),
    (0.04, 2.0, [(0.0, 0.04)]),
    (1.0, 1.0, [(0.0, 1.0)]),
])
def test_exact_plans(duration, clip_s, expected):
    spans = plan_clips(duration, clip_s)
    assert [(s.start_s, s.end_s) for s in spans] == expected
    check_plan(spans, duration, clip_s)


def test_no_stubby_tail_from_float_noise():
    # 3 * 0.1 style noise must not produce a third, microscopic clip.
    spans = plan_clips(2 * 3.3 + 1e-12, 3.3)
    assert len(spans) == 2


@pytest.mark.parametrize("duration", [0.0, -1.0, -1e-9])
def test_zero_or_negative_duration(duration):
    assert plan_clips(duration, 5.0) == ()


def test_cut_splits_shots():
    spans = plan_clips(10.0, 5.0, cuts_s=[3.0])
    assert [(s.start_s, s.end_s) for s in spans] == [(0.0, 3.0), (3.0, 6.5), (6.5, 10.0)]
    check_plan(spans, 10.0, 5.0, [3.0])


def test_unsorted_and_duplicate_cuts():
    spans = plan_clips(12.0, 5.0, cuts_s=[8.0, 2.0, 8.0, 2.0])
    assert [(s.start_s, s.end_s) for s in spans] == [(0.0, 2.0), (2.0, 5.0), (5.0, 8.0), (8.0, 12.0)]


@pytest.mark.parametrize("cuts", [[0.0], [0.0005], [9.9995], [10.0], [-3.0], [12.0], []])
def test_cuts_at_or_beyond_the_ends_are_ignored(cuts):
    assert plan_clips(10.0, 5.0, cuts) == plan_clips(10.0, 5.0)


def test_cuts_closer_than_a_millisecond_merge():
    spans = plan_clips(10.0, 20.0, cuts_s=[4.0, 4.0005])
    assert [(s.start_s, s.end_s) for s in spans] == [(0.0, 4.0), (4.0, 10.0)]


def test_many_cuts_short_shots():
    cuts = [0.5 * i for i in range(1, 20)]
    spans = plan_clips(10.0, 5.0, cuts)
    assert [(s.start_s, s.end_s) for s in spans] == [(0.5 * i, 0.5 * (i + 1)) for i in range(20)]


def test_clip_spans_are_hashable_dataclasses():
    spans = plan_clips(4.0, 2.0)
    assert spans == (ClipSpan(0, 0.0, 2.0), ClipSpan(1, 2.0, 4.0))
    assert spans[1].duration_s == 2.0


def test_random_plans_keep_invariants():
    """Property test with a seeded generator (hypothesis is not installed)."""
    rng = random.Random(1234)
    for _ in range(300):
        duration = rng.choice([rng.uniform(0.001, 1.0), rng.uniform(1, 200), rng.uniform(200, 1200)])
        clip_s = rng.choice([rng.uniform(0.1, 2.0), rng.uniform(2, 30)])
        cuts = sorted(rng.uniform(-1, duration + 1) for _ in range(rng.randint(0, 8)))
        spans = plan_clips(duration, clip_s, cuts)
        check_plan(spans, duration, clip_s, cuts)
        # No stubby tail: within one shot all clips have the same length, and no more than
        # ceil(shot / clip_s) of them.
        bounds = [0.0]
        for c in cuts:
            if 1e-3 < c < duration - 1e-3 and c - bounds[-1] > 1e-3:
                bounds.append(c)
        bounds.append(duration)
        n_expected = sum(max(1, math.ceil((b - a) / clip_s - 1e-9)) for a, b in zip(bounds, bounds[1:]))
        assert len(spans) == n_expected
        for a, b in zip(bounds, bounds[1:]):
            lengths = [s.duration_s for s in spans if a - EPS <= s.start_s and s.end_s <= b + EPS]
            assert lengths and max(lengths) - min(lengths) <= 3 * EPS
            assert sum(lengths) == pytest.approx(b - a, abs=3 * EPS)


# -- snippet times ----------------------------------------------------------------------------

def test_snippet_times_are_segment_centres():
    span = ClipSpan(0, 2.0, 5.0)
    assert snippet_times(span, 3) == pytest.approx((2.5, 3.5, 4.5))
    assert snippet_times(span, 1) == pytest.approx((3.5,))
    assert snippet_times(ClipSpan(1, 0.0, 1.0), 4) == pytest.approx((0.125, 0.375, 0.625, 0.875))


def test_snippet_times_inside_span_and_increasing():
    rng = random.Random(7)
    for _ in range(200):
        start = rng.uniform(0, 100)
        span = ClipSpan(0, start, start + rng.uniform(0.01, 10))
        k = rng.randint(1, 16)
        times = snippet_times(span, k)
        assert len(times) == k
        assert all(span.start_s < t < span.end_s for t in times)
        assert list(times) == sorted(times)
        seg = span.duration_s / k
        assert times[0] - span.start_s == pytest.approx(seg / 2)
        assert span.end_s - times[-1] == pytest.approx(seg / 2)


@pytest.mark.parametrize("duration,expected", [(5.0, 3), (3.4, 3), (3.3, 2), (2.5, 2), (1.6, 1), (1.7, 2), (0.4, 1)])
def test_snippet_count_keeps_sampling_density_in_short_clips(duration, expected):
    from indexer.clips import snippets_for

    assert snippets_for(ClipSpan(0, 10.0, 10.0 + duration), 3, 5.0) == expected
    assert snippets_for(ClipSpan(0, 0.0, duration), 3, None) == 3  # no clip_s: always K
