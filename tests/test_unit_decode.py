"""Unit tests for indexer.decode: the right frame for each snippet, sizes, rotation, damage, timeouts."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PacedContainer, copy_shared, ffmpeg_exe, make_color_video, make_video
from indexer.clips import plan_clips, snippet_times
from indexer.decode import DecodeStats, SnippetChunk, iter_shot_chunks, iter_snippet_chunks, target_size
from indexer.probe import ProbeFailure, probe_video
from indexer.watch import DecodeHeartbeat, DecodeTimeout
from indexer.types import ClipSpan

COLOURS = ["red", "green", "blue"]  # 2 s each


def dominant(frame: np.ndarray) -> str:
    return "rgb"[int(np.argmax(frame.reshape(-1, 3).mean(axis=0)))]


def decode_all(path, clip_s=1.0, k=3, short_side=32, sampling="exact", spans=None, **kw):
    probe = probe_video(str(path))
    spans = plan_clips(probe.duration_s, clip_s) if spans is None else spans
    stats = DecodeStats()
    chunks = list(iter_snippet_chunks(str(path), probe, spans, k, short_side, sampling, stats=stats, **kw))
    return probe, spans, chunks, stats


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *args], check=True, timeout=120)


@pytest.fixture(scope="module")
def gen(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("decode_videos")


@pytest.fixture(scope="module")
def rgb_video(gen) -> Path:
    return make_color_video(gen / "rgb.mp4", COLOURS, seconds_each=2.0)


@pytest.fixture(scope="module")
def rgb_keyint_video(gen) -> Path:
    """Same colours, a keyframe exactly every second (25 frames) and nowhere else."""
    inputs: list[str] = []
    for c in COLOURS:
        inputs += ["-f", "lavfi", "-t", "2", "-i", f"color=c={c}:size=160x120:rate=25"]
    path = gen / "rgb_kf.mp4"
    ffmpeg(*inputs, "-filter_complex", "[0:v][1:v][2:v]concat=n=3:v=1:a=0[v]", "-map", "[v]",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast",
           "-x264-params", "keyint=25:min-keyint=25:scenecut=0", str(path))
    return path


@pytest.fixture(scope="module")
def plain_and_rotated(gen) -> tuple[Path, Path]:
    plain = make_video(gen / "plain.mp4", "testsrc2=size=160x120:rate=25", duration_s=1.0)
    rotated = gen / "rot90.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(plain), "-c", "copy", str(rotated))
    return plain, rotated


# -- which frame ----------------------------------------------------------------------------------

def test_snippets_have_expected_colour_exact(rgb_video):
    probe, spans, chunks, stats = decode_all(rgb_video, clip_s=1.0, k=3)
    assert len(spans) == 6
    got_spans = [s for c in chunks for s in c.spans]
    assert got_spans == list(spans)
    frames = np.concatenate([c.frames for c in chunks])
    assert frames.shape == (18, 32, 44, 3) and frames.dtype == np.uint8
    colours = [dominant(f) for f in frames]
    assert colours == ["r"] * 6 + ["g"] * 6 + ["b"] * 6
    assert 18 <= stats.frames_decoded <= 150  # exact mode may skip frames no target needs
    assert stats.packet_errors == 0
    assert stats.last_frame_s == pytest.approx(5.96)
    # Converted frames are distinct frames at the 18 distinct target times.
    assert stats.frames_converted == 18


def test_chunk_times_are_snippet_times(rgb_video):
    _, spans, chunks, _ = decode_all(rgb_video, clip_s=2.0, k=4)
    times = [t for c in chunks for t in c.times_s]
    assert times == [snippet_times(s, 4) for s in spans]


def test_chunking_splits_clips_in_order(rgb_video):
    _, spans, chunks, _ = decode_all(rgb_video, clip_s=0.5, k=3, chunk_frames=9)
    assert len(spans) == 12
    assert [len(c.spans) for c in chunks] == [3, 3, 3, 3]
    assert all(c.frames.shape[0] == 9 for c in chunks)
    assert [s for c in chunks for s in c.spans] == list(spans)


def test_solid_colour_values(rgb_video):
    _, _, chunks, _ = decode_all(rgb_video, clip_s=2.0, k=1)
    means = [c.reshape(-1, 3).mean(0) for ch in chunks for c in ch.frames]
    np.testing.assert_allclose(means[0], [255, 0, 0], atol=6)
    np.testing.assert_allclose(means[1], [0, 128, 0], atol=6)  # lavfi 'green' is #008000
    np.testing.assert_allclose(means[2], [0, 0, 255], atol=6)


def test_snippet_at_colour_boundary_picks_nearest_frame(rgb_video):
    # Frames every 0.04 s; the last red one is at 1.96 s, the first green one at 2.00 s.
    # 1.97 -> 1.96 (red); 1.99 -> 2.00 (green: nearer than 1.96); 2.01 -> 2.00 (green).
    spans = (ClipSpan(0, 1.96, 1.98), ClipSpan(1, 1.98, 2.0), ClipSpan(2, 2.0, 2.02))
    _, _, chunks, _ = decode_all(rgb_video, k=1, spans=spans)
    assert [dominant(f) for c in chunks for f in c.frames] == ["r", "g", "g"]


def test_keyframe_sampling_uses_keyframes_only(rgb_keyint_video):
    _, spans, chunks, stats = decode_all(rgb_keyint_video, clip_s=2.0, k=1, sampling="keyframe")
    # Targets 1, 3, 5 s fall exactly on keyframes.
    assert [dominant(f) for c in chunks for f in c.frames] == ["r", "g", "b"]
    assert stats.frames_decoded == 6  # one keyframe per second, nothing else decoded
    assert stats.last_frame_s == pytest.approx(5.0)


def test_exact_and_keyframe_both_return_every_clip(rgb_keyint_video):
    results = {}
    for sampling in ("exact", "keyframe"):
        _, spans, chunks, stats = decode_all(rgb_keyint_video, clip_s=1.0, k=3, sampling=sampling)
        frames = np.concatenate([c.frames for c in chunks])
        assert frames.shape == (18, 32, 44, 3)
        assert [s for c in chunks for s in c.spans] == list(spans)
        results[sampling] = (frames, stats)
    assert results["keyframe"][1].frames_decoded < results["exact"][1].frames_decoded
    # Clip centres 0.5, 2.5, 4.5: exact gives the true colour; keyframe the nearest keyframe's.
    assert [dominant(f) for f in results["exact"][0][1::3]] == ["r", "r", "g", "g", "b", "b"]


def test_keyframe_only_at_start_serves_whole_video(rgb_video):
    # Default x264 GOP (250) > 150 frames: a single keyframe serves every target.
    _, spans, chunks, stats = decode_all(rgb_video, clip_s=2.0, k=2, sampling="keyframe")
    assert stats.frames_decoded == 1
    assert [s for c in chunks for s in c.spans] == list(spans)
    assert {dominant(f) for c in chunks for f in c.frames} == {"r"}


def test_delayed_start_times_are_relative_to_first_frame(gen, rgb_video):
    shifted = gen / "shifted.mp4"
    ffmpeg("-i", str(rgb_video), "-c", "copy", "-output_ts_offset", "1.5", str(shifted))
    probe, spans, chunks, _ = decode_all(shifted, clip_s=1.0, k=1)
    assert probe.start_time_s == pytest.approx(1.5)
    assert len(spans) == 6
    assert [dominant(f) for c in chunks for f in c.frames] == ["r", "r", "g", "g", "b", "b"]


# -- sizes, rotation, aspect ------------------------------------------------------------------------

@pytest.mark.parametrize("short_side,shape", [(32, (32, 44, 3)), (64, (64, 86, 3)), (120, (120, 160, 3)),
                                              (224, (224, 300, 3))])
def test_output_short_side(rgb_video, short_side, shape):
    _, _, chunks, _ = decode_all(rgb_video, clip_s=6.0, k=1, short_side=short_side)
    assert chunks[0].frames.shape[1:] == shape
    assert min(shape[:2]) == short_side


def test_target_size_rounds_to_even(rgb_video):
    probe = probe_video(str(rgb_video))
    assert target_size(probe, 32) == (44, 32)
    w, h = target_size(probe, 33)
    assert w % 2 == 0 and h % 2 == 0 and h in (33, 34)


def test_rotated_frame_equals_rot90_of_plain(plain_and_rotated):
    plain, rotated = plain_and_rotated
    p_rot = probe_video(str(rotated))
    assert p_rot.rotation_deg == 90
    _, _, a, _ = decode_all(plain, clip_s=0.5, k=1, short_side=32)
    _, _, b, _ = decode_all(rotated, clip_s=0.5, k=1, short_side=32)
    fa = np.concatenate([c.frames for c in a])
    fb = np.concatenate([c.frames for c in b])
    assert fa.shape == (2, 32, 44, 3)
    assert fb.shape == (2, 44, 32, 3)  # portrait on display
    for x, y in zip(fa, fb):
        assert np.abs(np.rot90(x).astype(int) - y).mean() < 2.0
        # and clearly not the other way round (testsrc2 is asymmetric)
        assert np.abs(np.rot90(x, k=3).astype(int) - y).mean() > 30.0


def test_rotated_frame_matches_ffmpeg_autorotate(plain_and_rotated):
    _, rotated = plain_and_rotated
    _, _, chunks, _ = decode_all(rotated, spans=(ClipSpan(0, 0.0, 0.08),), k=1, short_side=32)
    ours = chunks[0].frames[0].astype(int)  # the frame at 0.04 s
    raw = subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-ss", "0.04", "-i", str(rotated),
                          "-frames:v", "1", "-s", "32x44", "-sws_flags", "bicubic", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True, timeout=60).stdout
    theirs = np.frombuffer(raw, np.uint8).reshape(44, 32, 3).astype(int)
    assert np.abs(theirs - ours).mean() < 20
    assert np.abs(np.rot90(theirs, 2) - ours).mean() > np.abs(theirs - ours).mean() + 30


def test_non_square_pixels_give_display_aspect(gen):
    sar = make_video(gen / "sar2.mp4", "testsrc2=size=160x120:rate=25", duration_s=1.0,
                     extra=["-vf", "setsar=2"])
    probe, _, chunks, _ = decode_all(sar, clip_s=1.0, k=1, short_side=32)
    assert (probe.display_width, probe.display_height) == (320, 120)
    h, w = chunks[0].frames.shape[1:3]
    assert h == 32
    assert w == 86  # round(320 * 32 / 120) = 85, rounded up to even
    assert w / h == pytest.approx(320 / 120, rel=0.03)


def test_rotated_corpus_file_is_portrait(shared_videos, tmp_path):
    (path,) = copy_shared(["decord_video_90.mov"], tmp_path)
    (path0,) = copy_shared(["decord_video_0.mov"], tmp_path)
    _, _, chunks, _ = decode_all(path, spans=(ClipSpan(0, 0.0, 0.1),), k=1, short_side=32)
    _, _, chunks0, _ = decode_all(path0, spans=(ClipSpan(0, 0.0, 0.1),), k=1, short_side=32)
    h, w = chunks[0].frames.shape[1:3]
    assert (h, w) == (58, 32)  # 568x320 rotated: display 320x568
    assert chunks0[0].frames.shape[1:3] == (32, 58)
    # Stored -90 deg (clockwise): compare with ffmpeg's own autorotation of the first frame.
    raw = subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-frames:v", "1",
                          "-s", "32x58", "-sws_flags", "bicubic", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True, timeout=60).stdout
    theirs = np.frombuffer(raw, np.uint8).reshape(58, 32, 3).astype(int)
    ours = chunks[0].frames[0].astype(int)
    assert np.abs(theirs - ours).mean() < 15
    assert np.abs(np.rot90(theirs, 2) - ours).mean() > np.abs(theirs - ours).mean() + 15


# -- damage and limits ----------------------------------------------------------------------------

def test_corrupted_file_yields_clips_and_counts_errors(shared_videos, tmp_path):
    (path,) = copy_shared(["decord_corrupted.mp4"], tmp_path)
    probe, spans, chunks, stats = decode_all(path, clip_s=1.0, k=3)
    assert len(spans) == 5
    assert len([s for c in chunks for s in c.spans]) >= 4
    assert stats.packet_errors >= 1
    assert stats.frames_decoded >= 40
    assert stats.stopped_early is None


def test_truncated_file_drops_tail_clips(gen, rgb_video):
    mkv = gen / "rgb.mkv"
    ffmpeg("-i", str(rgb_video), "-c", "copy", str(mkv))
    data = mkv.read_bytes()
    truncated = gen / "truncated.mkv"
    truncated.write_bytes(data[: len(data) // 2])
    probe, spans, chunks, stats = decode_all(truncated, clip_s=1.0, k=1)
    assert probe.duration_s == pytest.approx(6.0)  # the header still claims the full length
    got = [s for c in chunks for s in c.spans]
    assert 1 <= len(got) < len(spans)
    assert got == list(spans[: len(got)])  # a prefix, in order
    # A target after the last decoded frame is served only within the 1 s tolerance.
    assert max(t for c in chunks for ts in c.times_s for t in ts) <= stats.last_frame_s + 1.0
    assert stats.last_frame_s < 4.0
    assert dominant(chunks[0].frames[0]) == "r"


def _long_video(gen) -> Path:
    long = gen / "long.mp4"
    if not long.exists():
        make_video(long, "testsrc2=size=160x120:rate=25", duration_s=8.0)
    return long


def _decode_with(path, mode: str, timeout_s: float, heartbeat_s: float | None = None) -> list:
    """Every item of one decode of ``path``: snippet modes, or the shot-aligned decode."""
    probe = probe_video(str(path))
    if mode == "shots":
        return list(iter_shot_chunks(str(path), probe, 3, 32, 2.0, 0.6, timeout_s=timeout_s,
                                     heartbeat_s=heartbeat_s))
    return list(iter_snippet_chunks(str(path), probe, plan_clips(probe.duration_s, 2.0), 3, 32,
                                    sampling=mode, timeout_s=timeout_s, heartbeat_s=heartbeat_s))


@pytest.mark.parametrize("mode", ["exact", "keyframe", "shots"])
def test_a_decode_that_stops_moving_forward_is_stopped(gen, mode, monkeypatch):
    import indexer.decode as decode

    long = _long_video(gen)
    real_open = decode.open_container
    monkeypatch.setattr(decode, "open_container", lambda path: PacedContainer(real_open(path), circle_after=10))
    real_decode = decode._decode_packet
    monkeypatch.setattr(decode, "_decode_packet", lambda packet, stats, errors: (
        [] if packet.pts is not None and packet.pts > 0 and stats.frames_decoded >= 5 else real_decode(packet, stats, errors)))
    t0 = time.monotonic()
    with pytest.raises(DecodeTimeout, match=r"made no progress for 0.4 s"):
        _decode_with(long, mode, timeout_s=0.4)
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("mode", ["exact", "keyframe", "shots"])
def test_a_decode_slower_than_real_time_is_not_stopped(gen, mode, monkeypatch):
    """Slow is not hung: a bound that grew with the duration failed 8K files that decode slower
    than real time. Every packet here takes 10 ms and the stall bound is 0.2 s, far less than
    the whole decode, which must finish with the same chunks as an unhurried one."""
    import indexer.decode as decode

    long = _long_video(gen)
    expected = _decode_with(long, mode, timeout_s=60)
    real_decode = decode._decode_packet

    def slow(packet, stats, errors):
        time.sleep(0.01)
        return real_decode(packet, stats, errors)

    monkeypatch.setattr(decode, "_decode_packet", slow)
    t0 = time.monotonic()
    got = _decode_with(long, mode, timeout_s=0.2)
    assert time.monotonic() - t0 > 0.4  # really slower than the bound
    assert [c.spans for c in got] == [c.spans for c in expected]
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(got, expected))


def test_heartbeats_come_between_chunks_only_when_asked(gen, monkeypatch):
    import indexer.decode as decode

    long = _long_video(gen)
    real_decode = decode._decode_packet

    def slow(packet, stats, errors):
        time.sleep(0.01)
        return real_decode(packet, stats, errors)

    monkeypatch.setattr(decode, "_decode_packet", slow)
    for mode in ("exact", "shots"):
        plain = _decode_with(long, mode, timeout_s=60)
        assert not any(isinstance(x, DecodeHeartbeat) for x in plain)
        items = _decode_with(long, mode, timeout_s=60, heartbeat_s=0.1)
        beats = [x for x in items if isinstance(x, DecodeHeartbeat)]
        chunks = [x for x in items if not isinstance(x, DecodeHeartbeat)]
        assert len(beats) >= 2, mode
        assert [b.position_s for b in beats] == sorted(b.position_s for b in beats)
        assert 0 < beats[-1].position_s <= 8.1
        assert [c.spans for c in chunks] == [c.spans for c in plain]


def test_no_spans_yields_nothing(rgb_video):
    probe = probe_video(str(rgb_video))
    assert list(iter_snippet_chunks(str(rgb_video), probe, (), 3, 32)) == []


def test_undecodable_stream_stops_early_and_fails(gen, rgb_video):
    """Zero the mdat payload: the container is intact, every packet is garbage."""
    data = bytearray(rgb_video.read_bytes())
    at = data.find(b"mdat")
    size = int.from_bytes(data[at - 4:at], "big")
    data[at + 4:at - 4 + size] = bytes(size - 8)
    zeroed = gen / "zeroed.mp4"
    zeroed.write_bytes(bytes(data))
    probe = probe_video(str(zeroed))  # the header is fine
    assert probe.duration_s == pytest.approx(6.0)
    stats = DecodeStats()
    with pytest.raises(ProbeFailure, match="no frame could be decoded"):
        list(iter_snippet_chunks(str(zeroed), probe, plan_clips(6.0, 1.0), 3, 32, stats=stats))
    assert stats.frames_decoded == 0
    assert stats.packet_errors == 50  # _MAX_CONSECUTIVE_ERRORS
    assert stats.stopped_early == "too many undecodable packets in a row"


def test_decode_missing_file_raises_probe_failure(rgb_video, tmp_path):
    probe = probe_video(str(rgb_video))
    with pytest.raises(ProbeFailure, match="cannot read file"):
        list(iter_snippet_chunks(str(tmp_path / "gone.mp4"), probe, plan_clips(6.0, 2.0), 1, 32))


def test_targets_beyond_last_frame_within_tolerance_are_served(rgb_video):
    probe = probe_video(str(rgb_video))
    longer = dataclasses.replace(probe, duration_s=6.5)  # header longer than the frames (0.54 s)
    spans = plan_clips(longer.duration_s, 6.5)
    stats = DecodeStats()
    chunks = list(iter_snippet_chunks(str(rgb_video), longer, spans, 5, 32, stats=stats))
    assert [s for c in chunks for s in c.spans] == list(spans)
    assert dominant(chunks[0].frames[-1]) == "b"


def test_targets_far_beyond_last_frame_are_dropped(rgb_video):
    probe = probe_video(str(rgb_video))
    longer = dataclasses.replace(probe, duration_s=12.0)
    spans = plan_clips(longer.duration_s, 2.0)
    chunks = list(iter_snippet_chunks(str(rgb_video), longer, spans, 3, 32))
    got = [s for c in chunks for s in c.spans]
    assert got == list(spans[:3])  # clips after ~7 s have no frame


@pytest.mark.parametrize("mode", ["exact", "keyframe", "shots"])
def test_a_timestamp_reset_is_still_progress(gen, mode, monkeypatch):
    """Two MPEG-TS captures joined byte for byte: timestamps start again half way (as in
    broadcast recordings). The second half never gets past the first half's last timestamp, but
    it moves on through the file, so a slow decode of it is not a stall."""
    import indexer.decode as decode

    joined = gen / "reset.ts"
    if not joined.exists():
        parts = []
        for i, src in enumerate(("testsrc2", "smptebars")):
            part = gen / f"part{i}.ts"
            make_video(part, f"{src}=size=160x120:rate=25", duration_s=3.0)
            parts.append(part.read_bytes())
        joined.write_bytes(b"".join(parts))
    real_decode = decode._decode_packet

    def slow(packet, stats, errors):
        time.sleep(0.01)  # the second half's 75 packets take 0.75 s, more than the 0.3 s bound
        return real_decode(packet, stats, errors)

    monkeypatch.setattr(decode, "_decode_packet", slow)
    items = _decode_with(joined, mode, timeout_s=0.3)
    assert items and all(isinstance(c, SnippetChunk) for c in items)
