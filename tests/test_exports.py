"""Scene exports (indexer.exports) and ``vidx scenes``: CSV, JSON, EDL and OTIO read back,
thumbnails and contact sheets of a generated video with known colours per shot."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ffmpeg_exe, make_color_video
from indexer import exports
from indexer.probe import probe_video
from indexer.store import IndexParams, IndexStore
from indexer.types import ClipEmbedding, ClipSpan, VideoFile, VideoResult, VideoStatus

MODEL = "colour-test|0"
DIM = 8
COLOURS = ["red", "lime", "blue"]  # 2 s each at 25 fps
RGB = {"red": (255, 0, 0), "lime": (0, 255, 0), "blue": (0, 0, 255)}


def result_for(path: Path, spans: list[tuple[float, float]]) -> VideoResult:
    rng = np.random.default_rng(0)
    probe = probe_video(str(path))
    vecs = rng.normal(size=(len(spans), DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    clips = tuple(ClipEmbedding(ClipSpan(i, s, e), vecs[i], ((s + e) / 2,)) for i, (s, e) in enumerate(spans))
    st = path.stat()
    return VideoResult(file=VideoFile(str(path), st.st_size, st.st_mtime_ns), fingerprint=f"fp-{path.name}",
                       status=VideoStatus.INDEXED, probe=probe, clips=clips, video_vector=vecs[0],
                       frames_embedded=len(clips))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """An index with: rgb.mp4 (3 detected shots, shot tags), clips.mp4 (no shots rows, clip tags
    only: an index made before shot detection), rot.mp4 (rotated 90 degrees, 1 shot)."""
    root = tmp_path_factory.mktemp("exports")
    videos = root / "videos"
    rgb = make_color_video(videos / "rgb.mp4", COLOURS, seconds_each=2.0)
    old = make_color_video(videos / "clips.mp4", ["red", "blue"], seconds_each=2.0)
    plain = make_color_video(videos / "plain.mp4", ["red"], seconds_each=1.0, size="160x96")
    rot = videos / "rot.mp4"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-display_rotation", "90", "-i", str(plain),
                    "-c", "copy", str(rot)], check=True, timeout=60)
    index = root / "index"
    with IndexStore(str(index)) as store:
        store.register_model(MODEL, "colour", "test", DIM, 32, 100.0)
        store.commit_results([result_for(rgb, [(0, 2), (2, 4), (4, 6)]), result_for(old, [(0, 2), (2, 4)]),
                              result_for(rot, [(0, 1)])], IndexParams(MODEL, 2.0, 1, "exact"), run_id=1)
        con = store.con
        vid = dict(con.execute("SELECT path, video_id FROM videos").fetchall())
        for i, colour in enumerate(COLOURS):
            sid = con.execute("SELECT nextval('shot_ids')").fetchall()[0][0]
            con.execute("INSERT INTO shots VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [sid, vid[str(rgb)], i, 2.0 * i, 2.0 * i + 2, 50 * i, 50 * i + 50, "cut"])
            con.execute("INSERT INTO shot_tags VALUES (?, 'scenes', ?, 0.6), (?, 'objects', 'ball', 0.2)",
                        [sid, f"{colour} room", sid])
        sid = con.execute("SELECT nextval('shot_ids')").fetchall()[0][0]
        con.execute("INSERT INTO shots VALUES (?, ?, 0, 0.0, 1.0, 0, 25, NULL)", [sid, vid[str(rot)]])
        clips = con.execute("SELECT clip_id, idx FROM clips WHERE video_id = ? ORDER BY idx",
                            [vid[str(old)]]).fetchall()
        con.execute("INSERT INTO clip_tags VALUES (?, 'scenes', 'beach', 0.8), (?, 'actions', 'surfing water', 0.3),"
                    " (?, 'scenes', 'night', 0.5)", [clips[0][0], clips[0][0], clips[1][0]])
    return {"index": index, "rgb": rgb, "old": old, "rot": rot, "ids": vid}


def scenes_of(corpus, key: str, thumbnails: bool = False) -> exports.VideoScenes:
    with IndexStore(str(corpus["index"]), read_only=True) as store:
        scenes = exports.load_scenes(store.con, str(corpus[key]))
    if thumbnails:
        exports.make_thumbnails(scenes, str(corpus["index"]))
    return scenes


# -- time ---------------------------------------------------------------------------------------------

def test_timecodes():
    assert exports.timecode(0, 25) == "00:00:00:00"
    assert exports.timecode(1801, 25) == "00:01:12:01"
    assert exports.timecode(25 * 3600 + 24, 25.0) == "01:00:00:24"
    ntsc = exports.timeline_rate(29.97002997, 29.97002997)
    assert ntsc == pytest.approx(30000 / 1001, abs=1e-12) and exports.nominal_rate(ntsc) == 30
    assert exports.timecode(30, ntsc) == "00:00:01:00"  # non-drop-frame labels
    assert exports.timeline_rate(24.99, 25) == 25.0
    assert exports.timeline_rate(0.0, 0.0) == 25.0 and exports.timeline_rate(None, 30.0) == 30.0
    assert exports.nominal_rate(12.5) == 13 and exports.timecode(13, 12.5) == "00:00:01:00"


# -- shots and tags -----------------------------------------------------------------------------------

def test_load_scenes_from_shots(corpus):
    sc = scenes_of(corpus, "rgb")
    assert sc.shots_from == "shots" and sc.fps == 25.0 and sc.n_frames == 150
    assert [(s.idx, s.start_s, s.end_s, s.start_frame, s.end_frame) for s in sc.shots] == \
        [(0, 0.0, 2.0, 0, 50), (1, 2.0, 4.0, 50, 100), (2, 4.0, 6.0, 100, 150)]
    assert [s.labels() for s in sc.shots] == [["red room", "ball"], ["lime room", "ball"], ["blue room", "ball"]]
    assert sc.shots[0].tags[0] == ("scenes", "red room", 0.6)
    assert sc.shots[1].transition == "cut"


def test_load_scenes_without_shots_uses_clips(corpus):
    sc = scenes_of(corpus, "old")
    assert sc.shots_from == "clips"
    assert [(s.start_s, s.end_s, s.start_frame, s.end_frame) for s in sc.shots] == [(0, 2, 0, 50), (2, 4, 50, 100)]
    assert sc.shots[0].labels() == ["beach", "surfing water"] and sc.shots[1].labels() == ["night"]
    assert sc.shots[0].shot_id is None


def test_find_video_by_name_and_errors(corpus):
    with IndexStore(str(corpus["index"]), read_only=True) as store:
        assert exports.load_scenes(store.con, "rgb.mp4").path == str(corpus["rgb"])
        with pytest.raises(exports.NotIndexed, match="not in the index"):
            exports.load_scenes(store.con, str(corpus["rgb"]) + ".missing")
        with pytest.raises(exports.NotIndexed, match="not in the index"):
            exports.load_scenes(store.con, "r_b.mp4")  # LIKE wildcards are taken literally
        with pytest.raises(exports.NotIndexed, match=r"caf\\xe9\.mp4 is not in the index; index it first"):
            exports.load_scenes(store.con, "caf\udce9.mp4")  # a Latin-1 name, as Python reads it
        with pytest.raises(exports.NotIndexed, match=r"is not in the index: its name holds a private-use"):
            exports.load_scenes(store.con, "caf\U000F00E9.mp4")


# -- formats ------------------------------------------------------------------------------------------

def test_csv_and_json(corpus):
    sc = scenes_of(corpus, "rgb", thumbnails=True)
    rows = list(csv.DictReader(io.StringIO(exports.to_csv(sc))))
    assert [r["shot"] for r in rows] == ["1", "2", "3"]
    assert rows[1]["start_tc"] == "00:00:02:00" and rows[1]["end_tc"] == "00:00:04:00"
    assert rows[1]["start_frame"] == "50" and rows[1]["end_frame"] == "100" and rows[1]["start_s"] == "2.000"
    assert rows[2]["tags"] == "blue room; ball" and rows[2]["tag_scores"] == "scenes:blue room=0.600; objects:ball=0.200"
    assert rows[0]["thumbnail"].endswith("shot_0.jpg") and Path(rows[0]["thumbnail"]).exists()

    data = json.loads(exports.render(sc, "json"))
    assert data["path"] == str(corpus["rgb"]) and data["timecode_rate"] == 25 and data["shots_from"] == "shots"
    assert data["contact_sheet"] and Path(data["contact_sheet"]).exists()
    s2 = data["shots"][2]
    assert (s2["shot"], s2["start_s"], s2["end_tc"], s2["start_frame"]) == (3, 4.0, "00:00:06:00", 100)
    assert s2["tags"][0] == {"vocabulary": "scenes", "label": "blue room", "score": 0.6}


def test_edl(corpus):
    sc = scenes_of(corpus, "rgb")
    edl = exports.to_edl(sc)
    events = re.findall(r"^(\d{3})\s+(\S+)\s+V\s+C\s+(\S+) (\S+) (\S+) (\S+)$", edl, re.M)
    assert events == [("001", "AX", "00:00:00:00", "00:00:02:00", "00:00:00:00", "00:00:02:00"),
                      ("002", "AX", "00:00:02:00", "00:00:04:00", "00:00:02:00", "00:00:04:00"),
                      ("003", "AX", "00:00:04:00", "00:00:06:00", "00:00:04:00", "00:00:06:00")]
    assert edl.count("* FROM CLIP NAME: rgb.mp4") == 3
    assert "* COMMENT: SHOT 3 TAGS: blue room (scenes 0.60), ball (objects 0.20)" in edl
    assert edl.startswith("TITLE: rgb\nFCM: NON-DROP FRAME\n")

    otio = pytest.importorskip("opentimelineio")
    if "cmx_3600" not in [a.name for a in otio.plugins.ActiveManifest().adapters]:
        pytest.skip("OpenTimelineIO's cmx_3600 adapter (package otio-cmx3600-adapter) is not installed")
    tl = otio.adapters.read_from_string(edl, adapter_name="cmx_3600", rate=25)
    clips = list(tl.find_clips())
    assert [c.name for c in clips] == ["rgb.mp4"] * 3
    assert [(c.source_range.start_time.to_frames(), c.source_range.duration.to_frames()) for c in clips] == \
        [(0, 50), (50, 50), (100, 50)]
    assert [[m.name for m in c.markers] for c in clips] == [["red room, ball"], ["lime room, ball"],
                                                            ["blue room, ball"]]
    assert clips[1].markers[0].marked_range.start_time.to_frames() == 50
    assert any("TAGS: lime room" in c for c in clips[1].metadata["cmx_3600"]["comments"])


def test_otio(corpus, tmp_path):
    otio = pytest.importorskip("opentimelineio")
    sc = scenes_of(corpus, "rgb", thumbnails=True)
    out = exports.write_export(sc, "otio", str(tmp_path / "rgb.otio"))
    tl = otio.adapters.read_from_file(out)
    assert len(tl.tracks) == 1 and tl.tracks[0].kind == otio.schema.TrackKind.Video
    clips = list(tl.find_clips())
    assert len(clips) == 3
    for shot, clip in zip(sc.shots, clips):
        assert clip.source_range.start_time.to_frames() == shot.start_frame
        assert clip.source_range.duration.to_frames() == shot.end_frame - shot.start_frame
        assert clip.source_range.start_time.rate == 25.0
        assert clip.media_reference.target_url == corpus["rgb"].as_uri()
        assert clip.media_reference.available_range.duration.to_frames() == 150
        (marker,) = clip.markers
        assert marker.name == ", ".join(shot.labels())
        assert marker.marked_range == clip.source_range
        assert [t["label"] for t in marker.metadata["vidx"]["tags"]] == shot.labels()
        assert marker.metadata["vidx"]["thumbnail"] == shot.thumbnail
    # the timeline places each shot at its own time
    assert tl.tracks[0].range_of_child_at_index(2).start_time.to_frames() == 100
    assert tl.duration().to_frames() == 150
    assert tl.metadata["vidx"]["path"] == str(corpus["rgb"])


# -- thumbnails ---------------------------------------------------------------------------------------

def test_thumbnails_and_contact_sheet(corpus):
    index = str(corpus["index"])
    sc = scenes_of(corpus, "rgb")
    folder = Path(index) / "thumbnails" / str(sc.video_id)
    shutil.rmtree(folder, ignore_errors=True)  # other tests of this module may have made them
    assert exports.make_thumbnails(sc, index) == 3
    for shot, colour in zip(sc.shots, COLOURS):
        assert shot.thumbnail == str(folder / f"shot_{shot.idx}.jpg")
        with Image.open(shot.thumbnail) as im:
            assert im.format == "JPEG" and im.size == (240, 180)  # 160x120 -> shorter side 180
            centre = np.asarray(im.convert("RGB"))[60:120, 80:160].reshape(-1, 3).mean(axis=0)
        assert np.abs(centre - RGB[colour]).max() < 40, (colour, centre)  # the frame of that shot
    with Image.open(sc.contact_sheet) as im:
        lay = exports.contact_sheet_layout(3, 240, 180)
        assert im.format == "JPEG" and im.size == (lay["width"], lay["height"])
        assert lay["cols"] == 3 and lay["rows"] == 1
    # cached: nothing decoded again; a changed shot is redrawn
    again = scenes_of(corpus, "rgb")
    mtime = Path(sc.contact_sheet).stat().st_mtime_ns
    assert exports.make_thumbnails(again, index) == 0
    assert again.contact_sheet == sc.contact_sheet and Path(sc.contact_sheet).stat().st_mtime_ns == mtime
    again.shots[2].end_s = 5.5
    assert exports.make_thumbnails(again, index) == 1
    assert exports.make_thumbnails(again, index, force=True) == 3


def test_thumbnail_of_rotated_video(corpus):
    sc = scenes_of(corpus, "rot", thumbnails=True)
    with Image.open(sc.shots[0].thumbnail) as im:
        assert im.size == (180, 300)  # 160x96 turned upright: portrait, shorter side 180


def test_thumbnails_of_a_missing_file(corpus, tmp_path, caplog):
    sc = scenes_of(corpus, "old")
    sc.path = str(tmp_path / "gone.mp4")
    sc.video_id = 999
    assert exports.make_thumbnails(sc, str(corpus["index"])) == 0
    assert all(s.thumbnail is None for s in sc.shots) and sc.contact_sheet is None
    assert "no thumbnails" in caplog.text
    assert exports.to_csv(sc)  # exports still work without thumbnails


def test_contact_sheet_layout_limits():
    lay = exports.contact_sheet_layout(2000, 320, 180)
    assert lay["cols"] == 5 and lay["rows"] == 400 and lay["height"] <= 60000
    assert exports.contact_sheet_layout(1, 320, 180)["cols"] == 1


# -- vidx scenes ---------------------------------------------------------------------------------------

def run_cli(argv: list[str]) -> int:
    from vidx.scenes_cli import add_parsers

    parser = argparse.ArgumentParser(prog="vidx")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_scenes_command(corpus, tmp_path, capsys):
    db = str(corpus["index"])
    assert run_cli(["scenes", str(corpus["rgb"]), "--db", db]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "3 shots from detected shots" in out[0]
    assert out[2].split()[:4] == ["1", "00:00:00:00", "00:00:02:00", "2.000"] and "red room, ball" in out[2]
    assert out[-1].startswith("contact sheet: ")

    assert run_cli(["scenes", "rgb.mp4", "--db", db, "--json", "--no-thumbnails"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["shots"]) == 3 and data["contact_sheet"] is None

    assert run_cli(["scenes", str(corpus["rgb"]), "--db", db, "--format", "edl"]) == 0
    assert capsys.readouterr().out.count("* FROM CLIP NAME:") == 3

    target = tmp_path / "cut.otio"
    assert run_cli(["scenes", str(corpus["rgb"]), "--db", db, "-o", str(target), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "otio" and summary["shots"] == 3 and target.exists()
    assert json.loads(target.read_text())["OTIO_SCHEMA"].startswith("Timeline")

    assert run_cli(["scenes", str(corpus["old"]), "--db", db, "--format", "csv", "--top-tags", "1"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["tags"] for r in rows] == ["beach", "night"]


def test_scenes_command_errors(corpus, tmp_path):
    from indexer.config import ConfigError
    from indexer.store import IndexError_

    with pytest.raises(IndexError_, match="not in the index"):
        run_cli(["scenes", str(tmp_path / "x.mp4"), "--db", str(corpus["index"])])
    with pytest.raises(IndexError_, match="no index"):
        run_cli(["scenes", "x.mp4", "--db", str(tmp_path / "none")])
    with pytest.raises(ConfigError, match="cannot write"):
        run_cli(["scenes", "rgb.mp4", "--db", str(corpus["index"]), "--no-thumbnails",
                 "-o", str(tmp_path / "no" / "such" / "dir.csv")])


def test_wired_into_vidx_main(corpus, capsys):
    """Once vidx.cli registers these commands, errors come out as one line with exit 1."""
    from vidx import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "scenes" not in sub.choices:
        pytest.skip("vidx scenes is not wired into vidx.cli yet")
    assert cli.main(["scenes", "nothing-here.mp4", "--db", str(corpus["index"])]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not in the index" in err[0]
    assert cli.main(["scenes", "rgb.mp4", "--db", str(corpus["index"]), "--format", "json",
                     "--no-thumbnails"]) == 0
    assert len(json.loads(capsys.readouterr().out)["shots"]) == 3


@pytest.mark.parametrize("suffix", ["mp4", "ts"])
def test_grab_frames_equals_sequential_decode(tmp_path, suffix):
    """Seeking (keyframe every 0.4 s, targets far apart) gives the frames a full decode gives."""
    import av

    from conftest import make_video
    from indexer.decode import target_size

    path = make_video(tmp_path / f"src.{suffix}", "testsrc2=size=160x120:rate=25", duration_s=20.0,
                      extra=["-g", "10"])
    probe = probe_video(str(path))
    targets = [19.91, 0.51, 7.31, 7.49, 15.11, 15.13]  # no ties between two frames
    got = exports.grab_frames(str(path), targets, short_side=120, probe=probe)
    size = target_size(probe, 120)
    with av.open(str(path)) as container:
        frames = [(f.time - probe.start_time_s, f.to_ndarray(width=size[0], height=size[1], format="rgb24",
                                                             interpolation="BICUBIC"))
                  for f in container.decode(video=0)]
    times = np.array([t for t, _ in frames])
    for target, frame in zip(targets, got):
        want = frames[int(np.argmin(np.abs(times - target)))][1]
        assert frame is not None and np.array_equal(frame, want), target
