"""Unit tests for indexer.probe on generated videos and on real odd files of the shared corpus."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from conftest import PacedContainer, copy_shared, ffmpeg_exe, make_video
from indexer.probe import ProbeFailure, probe_video
from indexer.types import VideoStatus


# -- generated videos -----------------------------------------------------------------------

def test_generated_h264(video_dir):
    p = probe_video(str(make_video(video_dir / "a.mp4", "testsrc2=size=160x120:rate=25", 2.0)))
    assert p.codec == "h264"
    assert "mp4" in p.container
    assert p.duration_s == pytest.approx(2.0, abs=0.01)
    assert p.duration_source in ("stream", "header")
    assert p.avg_fps == pytest.approx(25.0)
    assert p.base_fps == pytest.approx(25.0)
    assert p.variable_frame_rate is False
    assert p.n_frames == 50
    assert (p.width, p.height) == (160, 120)
    assert (p.display_width, p.display_height) == (160, 120)
    assert p.rotation_deg == 0
    assert p.sample_aspect_ratio == 1.0
    assert p.has_audio is False
    assert p.start_time_s == 0.0
    assert p.video_stream_index == 0


def test_generated_mkv_with_audio_and_odd_rate(video_dir):
    path = video_dir / "b.mkv"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y",
                    "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000",
                    "-t", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast",
                    "-c:a", "pcm_s16le", str(path)], check=True, timeout=60)
    p = probe_video(str(path))
    assert p.container.startswith("matroska")
    assert p.has_audio is True
    assert p.duration_s == pytest.approx(3.0, abs=0.11)
    assert p.avg_fps == pytest.approx(10.0, rel=0.01)
    assert (p.width, p.height) == (96, 64)


def test_generated_raw_h264_stream_is_demuxed(video_dir):
    """An Annex-B elementary stream has no container duration: it is measured by demuxing."""
    path = make_video(video_dir / "raw.h264", "testsrc2=size=64x48:rate=25", 2.0, extra=["-f", "h264"])
    p = probe_video(str(path))
    assert p.duration_source == "demuxed"
    assert p.n_frames == 50
    assert p.duration_s == pytest.approx(2.0, abs=0.05)


def test_generated_sar(video_dir):
    p = probe_video(str(make_video(video_dir / "sar.mp4", duration_s=1.0, extra=["-vf", "setsar=2"])))
    assert p.sample_aspect_ratio == 2.0
    assert (p.width, p.height) == (160, 120)
    assert (p.display_width, p.display_height) == (320, 120)


def test_generated_display_rotation(video_dir):
    plain = make_video(video_dir / "plain.mp4", duration_s=1.0)
    rotated = video_dir / "rot.mp4"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-display_rotation", "90",
                    "-i", str(plain), "-c", "copy", str(rotated)], check=True, timeout=60)
    p = probe_video(str(rotated))
    assert p.rotation_deg == 90
    assert (p.width, p.height) == (160, 120)
    assert (p.display_width, p.display_height) == (120, 160)


# -- failures on generated/odd bytes ----------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(ProbeFailure) as err:
        probe_video(str(tmp_path / "nope.mp4"))
    assert err.value.status == VideoStatus.FAILED
    assert "cannot read file" in err.value.reason


def test_random_bytes(tmp_path):
    f = tmp_path / "noise.mp4"
    f.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(ProbeFailure) as err:
        probe_video(str(f))
    assert err.value.status == VideoStatus.FAILED
    assert "not a readable media file" in err.value.reason


def test_json_named_as_video(tmp_path):
    f = tmp_path / "data.mp4"
    f.write_text('{"not": "a video"}\n' * 10)
    with pytest.raises(ProbeFailure) as err:
        probe_video(str(f))
    assert err.value.status == VideoStatus.FAILED
    assert "text/markup" in err.value.reason


def test_audio_only_generated(tmp_path):
    f = tmp_path / "tone.wav"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=8000", "-t", "1", str(f)], check=True, timeout=60)
    with pytest.raises(ProbeFailure) as err:
        probe_video(str(f))
    assert err.value.status == VideoStatus.SKIPPED
    assert "no video stream" in err.value.reason


# -- shared corpus --------------------------------------------------------------------------

def shared(tmp_path: Path, name: str) -> str:
    return str(copy_shared([name], tmp_path / "corpus")[0])


@pytest.fixture
def corpus(shared_videos, tmp_path):
    return lambda name: shared(tmp_path, name)


def failure(path: str) -> ProbeFailure:
    with pytest.raises(ProbeFailure) as err:
        probe_video(path)
    return err.value


def test_zero_byte_file(corpus):
    err = failure(corpus("moviepy_result_zero_length.webm"))
    assert err.status == VideoStatus.FAILED
    assert "empty" in err.reason


def test_html_named_avi(corpus):
    err = failure(corpus("opencvforpython_Megamind_actually_html.avi"))
    assert err.status == VideoStatus.FAILED
    assert "HTML" in err.reason


def test_audio_only_mp3(corpus):
    err = failure(corpus("moviepy_crunching.mp3"))
    assert err.status == VideoStatus.SKIPPED
    assert "no video stream" in err.reason


def test_mp3_with_cover_art(corpus):
    err = failure(corpus("moviepy_with-attached-pic.mp3"))
    assert err.status == VideoStatus.SKIPPED
    assert "cover art" in err.reason


def test_raw_mpeg4_elementary_stream(corpus):
    p = probe_video(corpus("v_Basketball_g01_c02.mp4"))
    assert p.codec == "mpeg4"
    assert p.duration_s == pytest.approx(180 * 1001 / 30000, abs=0.01)  # 6.006
    assert p.duration_source == "demuxed"
    assert p.n_frames == 180
    assert p.avg_fps == pytest.approx(30000 / 1001, rel=1e-3)
    assert (p.width, p.height) == (340, 256)


def test_webm_without_duration(corpus):
    p = probe_video(corpus("moviepy_no_duration.webm"))
    assert p.duration_s == pytest.approx(4.938, abs=0.01)
    assert p.duration_source == "demuxed"
    assert p.n_frames == 74
    assert p.codec == "vp9"
    assert p.has_audio is True


def test_rotated_minus_90(corpus):
    p = probe_video(corpus("pyscenedetect_issue-134-rotate.mp4"))
    assert p.rotation_deg == 270  # -90 (clockwise) expressed counter-clockwise
    assert (p.width, p.height) == (1280, 544)
    assert (p.display_width, p.display_height) == (544, 1280)
    assert p.duration_s == pytest.approx(10.01, abs=0.05)


def test_rotated_180(corpus):
    p = probe_video(corpus("moviepy_fire2.mp4"))
    assert p.rotation_deg == 180
    assert (p.display_width, p.display_height) == (1280, 720)


def test_decord_rotation_pair(corpus):
    p0 = probe_video(corpus("decord_video_0.mov"))
    p90 = probe_video(corpus("decord_video_90.mov"))
    assert p0.rotation_deg == 0 and (p0.display_width, p0.display_height) == (568, 320)
    assert p90.rotation_deg == 270 and (p90.display_width, p90.display_height) == (320, 568)


def test_non_square_pixels(corpus):
    p = probe_video(corpus("pyscenedetect_issue-195-aspect-ratio.mp4"))
    assert (p.width, p.height) == (704, 576)
    assert p.sample_aspect_ratio == pytest.approx(16 / 11)
    assert (p.display_width, p.display_height) == (1024, 576)


@pytest.mark.parametrize("name,avg_fps", [
    ("pyscenedetect_goldeneye-vfr-drop3.mp4", 3840000 / 239239),
    ("dvrscan_traffic_camera_vfr.mp4", 4800 / 287),
])
def test_variable_frame_rate(corpus, name, avg_fps):
    p = probe_video(corpus(name))
    assert p.variable_frame_rate is True
    assert p.avg_fps == pytest.approx(avg_fps, rel=0.01)
    assert p.base_fps > p.avg_fps * 1.2


def test_constant_frame_rate_not_flagged(corpus):
    p = probe_video(corpus("mediaelement_xbox.wmv"))
    assert p.variable_frame_rate is False


@pytest.mark.parametrize("name,codec,container,size,duration", [
    ("intel_classroom.gif", "gif", "gif", (480, 270), 2.99),
    ("mediaelement_xbox.wmv", "wmv3", "asf", (320, 240), 95.466),
    ("mediaelement_grampa-laughing.flv", "vp6f", "flv", (352, 288), 7.91),
])
def test_other_formats(corpus, name, codec, container, size, duration):
    p = probe_video(corpus(name))
    assert p.codec == codec
    assert p.container == container
    assert (p.width, p.height) == size
    assert p.duration_s == pytest.approx(duration, abs=0.05)


def test_audio_first_stream_order(corpus):
    """The WMV's video is stream 1: the index recorded must be the video stream's."""
    p = probe_video(corpus("mediaelement_xbox.wmv"))
    assert p.video_stream_index == 1
    assert p.has_audio is True


def test_delayed_start(corpus):
    p = probe_video(corpus("pyscenedetect_delayed_start.mp4"))
    assert p.start_time_s == pytest.approx(1.075, abs=1e-3)
    assert p.duration_s == pytest.approx(0.96, abs=0.05)


def _raw_stream(video_dir) -> Path:
    return make_video(video_dir / "long.h264", "testsrc2=size=64x48:rate=25", 4.0, extra=["-f", "h264"])


def test_measuring_a_long_raw_stream_is_bounded_by_progress_not_time(video_dir, monkeypatch):
    """Reading a whole raw stream for its duration once had a fixed 60 s bound, which a
    multi-GB raw capture on slow storage could pass while moving forward all the time. Here the
    read takes ~1 s (10 ms per packet) and the stall bound is 0.2 s: it must finish, with
    heartbeats when asked for, and give what an unhurried probe gives."""
    import indexer.probe as probe_mod
    from indexer.watch import DecodeHeartbeat

    path = str(_raw_stream(video_dir))
    expected = probe_video(path)
    assert expected.duration_source == "demuxed"
    real_open = probe_mod.open_container
    monkeypatch.setattr(probe_mod, "open_container", lambda p: PacedContainer(real_open(p), 0.01))
    t0 = time.monotonic()
    steps, beats = probe_mod.iter_probe(path, stall_s=0.2, heartbeat_s=0.1), []
    while True:
        try:
            beats.append(next(steps))
        except StopIteration as done:
            got = done.value
            break
    assert time.monotonic() - t0 > 0.6  # far longer than the bound
    assert got == expected
    assert len(beats) >= 4 and all(b == DecodeHeartbeat(0.0) for b in beats)
    assert probe_video(path, timeout_s=0.2) == expected  # no heartbeats unless asked for


def test_measuring_a_raw_stream_that_goes_round_in_circles_is_stopped(video_dir, monkeypatch):
    import indexer.probe as probe_mod

    path = str(_raw_stream(video_dir))
    real_open = probe_mod.open_container
    monkeypatch.setattr(probe_mod, "open_container", lambda p: PacedContainer(real_open(p), 0.0, circle_after=20))
    t0 = time.monotonic()
    with pytest.raises(ProbeFailure, match=r"measuring the duration \(the header has none\) made no progress for "
                                           r"0.3 s; the file may be damaged"):
        probe_video(path, timeout_s=0.3)
    assert time.monotonic() - t0 < 10
