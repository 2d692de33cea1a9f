"""Search end to end with a deterministic colour embedder, plus filters, merging and errors.

The index is built with the production decode/assemble/store code, in-process (no Ray),
with ColourEmbedder in place of the open_clip model, so assertions can be about meaning:
"red" must find the red seconds of the red video.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from colour_embedder import ColourEmbedder
from conftest import make_color_video
from indexer.discover import discover_files, fingerprint_file
from indexer.store import IndexParams, IndexStore, ModelMismatch
from indexer.types import ClipEmbedding, ClipSpan, VideoFile, VideoResult, VideoStatus
from indexer.work import ChunkHeader, DecodeOutcome, VideoAssembler, VideoJob, decode_video, embed_chunk
from search import Filters, Searcher, SearchError

PARAMS = IndexParams("colour-test", 2.0, 3, "exact+shots")


def build_index(index_dir: Path, folder: Path, clip_s: float = 2.0) -> None:
    """decode_video -> embed_chunk(ColourEmbedder) -> VideoAssembler -> commit, in-process."""
    model = ColourEmbedder()
    results = []
    for f in discover_files([str(folder)]):
        job = VideoJob(f, fingerprint_file(f.path), clip_s, 3, "exact", model.image_size, 60.0,
                       shots=True)
        asm = VideoAssembler(job)
        header = None
        for item in decode_video(job):
            if isinstance(item, ChunkHeader):
                header = item
            elif isinstance(item, DecodeOutcome):
                asm.outcome = item
            else:
                asm.chunks.append(embed_chunk(model, header, item, 32))
        results.append(asm.result())
    with IndexStore(str(index_dir)) as store:
        store.register_model("colour-test", "colour", "test", model.dim, model.image_size, model.logit_scale)
        run = store.start_run("index", {})
        store.commit_results(results, PARAMS, run)
        store.save_faiss(store.build_faiss())


@pytest.fixture(scope="module")
def colour_index(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("colours")
    videos = root / "videos"
    make_color_video(videos / "rgb.mp4", ["red", "green", "blue"], seconds_each=4.0)
    make_color_video(videos / "greens.mp4", ["green"], seconds_each=6.0)
    make_color_video(videos / "sub" / "yellow.mp4", ["yellow", "magenta"], seconds_each=3.0)
    make_color_video(videos / "long red.mp4", ["red"], seconds_each=20.0)
    index = root / "index"
    build_index(index, videos)
    return index, videos


def searcher_for(index: Path) -> Searcher:
    s = Searcher(str(index))
    s._model = ColourEmbedder()  # the test embedder stands in for open_clip
    return s


def test_text_query_finds_the_right_video_and_time_span(colour_index):
    index, videos = colour_index
    hits = searcher_for(index).search("blue", k=3)
    top = hits[0]
    assert top.path == str(videos / "rgb.mp4")
    # Blue is seconds 8-12 of rgb.mp4; shot detection puts cuts at the colour changes.
    assert top.start_s == pytest.approx(8.0, abs=0.15)
    assert top.end_s == pytest.approx(12.0, abs=0.15)
    assert top.score > 0.9


def test_adjacent_clips_merge_into_one_moment(colour_index):
    index, videos = colour_index
    hits = searcher_for(index).search("yellow", k=1)
    assert hits[0].path == str(videos / "sub" / "yellow.mp4")
    assert (hits[0].start_s, round(hits[0].end_s, 1)) == (0.0, 3.0)
    assert len(hits[0].clip_ids) == 2  # 3 s of yellow = two 1.5 s clips, merged
    unmerged = searcher_for(index).search("yellow", k=2, merge=False, per_video=5)
    assert len(unmerged[0].clip_ids) == 1


def test_per_video_cap_and_group_by_video(colour_index):
    index, videos = colour_index
    s = searcher_for(index)
    # The long red video has 10 red clips; with merging off each is its own moment.
    hits = s.search("red", k=6, merge=False, per_video=2)
    per_video = {}
    for h in hits:
        per_video[h.path] = per_video.get(h.path, 0) + 1
    assert max(per_video.values()) <= 2
    assert set(per_video) >= {str(videos / "long red.mp4"), str(videos / "rgb.mp4")}
    grouped = s.search("red", k=10, group="video")
    assert len({h.path for h in grouped}) == len(grouped)
    assert grouped[0].path in (str(videos / "long red.mp4"), str(videos / "rgb.mp4"))


def test_filters_apply_inside_the_search(colour_index):
    index, videos = colour_index
    s = searcher_for(index)
    # Green is best in greens.mp4 and rgb.mp4; restricting to a folder leaves only sub/.
    hits = s.search("green", k=3, filters=Filters(path_prefix=str(videos / "sub")))
    assert hits and all(h.path.startswith(str(videos / "sub")) for h in hits)
    hits = s.search("green", k=2, filters=Filters(path_glob="*rgb*"))
    assert hits[0].path == str(videos / "rgb.mp4")
    assert hits[0].start_s == pytest.approx(4.0, abs=0.15)
    short = s.search("red", k=5, filters=Filters(max_duration_s=13.0))
    assert short and all(h.path != str(videos / "long red.mp4") for h in short)
    assert s.search("red", k=5, filters=Filters(min_duration_s=1000.0)) == []


def test_min_score_drops_weak_results(colour_index):
    index, _ = colour_index
    hits = searcher_for(index).search("cyan", k=10, min_score=0.99)
    assert hits == []


def test_more_like_this_moment_and_image_query(colour_index, tmp_path):
    index, videos = colour_index
    s = searcher_for(index)
    own = s.search_like(str(videos / "rgb.mp4"), 9.0, k=3, include_source=True)
    assert own[0].path == str(videos / "rgb.mp4") and own[0].start_s == pytest.approx(8.0, abs=0.15)
    assert own[0].score == pytest.approx(1.0, abs=1e-5)
    # By default the source moment (the blue shot, 8-12 s, all its clips) is not a result.
    like = s.search_like(str(videos / "rgb.mp4"), 9.0, k=3)
    assert len(like) == 3
    assert not any(h.path == str(videos / "rgb.mp4") and h.start_s < 12.0 - 0.15 and h.end_s > 8.0 + 0.15
                   for h in like)
    assert not set(own[0].clip_ids) & {c for h in like for c in h.clip_ids}
    from PIL import Image

    img = tmp_path / "magenta.png"
    Image.new("RGB", (64, 48), (250, 5, 250)).save(img)
    hits = s.search_image(str(img), k=1)
    assert hits[0].path == str(videos / "sub" / "yellow.mp4") and hits[0].start_s == pytest.approx(3.0, abs=0.15)
    with pytest.raises(SearchError, match="no clip at"):
        s.search_like(str(videos / "rgb.mp4"), 99.0)
    with pytest.raises(SearchError, match="not in the index"):
        s.search_like(str(tmp_path / "nope.mp4"), 1.0)


def test_query_errors_are_one_clear_line(colour_index):
    index, _ = colour_index
    s = searcher_for(index)
    with pytest.raises(SearchError, match="empty query"):
        s.search("   ")
    with pytest.raises(SearchError, match="tokens long"):
        s.search("word " * 100)
    with pytest.raises(SearchError, match="UTF-8"):
        s.search("bad \udcff bytes")
    with pytest.raises(ModelMismatch, match="built with colour"):
        Searcher(str(index), model="ViT-B-32")
    with pytest.raises(SearchError, match=r"caf\\xe9\.mp4 is not in the index; index it first"):
        s.search_like("/v/caf\udce9.mp4", 1.0)  # a Latin-1 file name, as Python reads it, not indexed
    with pytest.raises(SearchError, match=r"is not in the index: its name holds a private-use"):
        s.search_like("/v/caf\U000F00E9.mp4", 1.0)


def test_filtered_search_returns_k_exact_results_on_seeded_data(tmp_path):
    """A filter keeping 2% of clips still yields k hits, equal to brute force within the filter."""
    rng = np.random.default_rng(7)
    dim, n_videos, clips_per_video = 16, 100, 10
    results = []
    for v in range(n_videos):
        clips = tuple(ClipEmbedding(ClipSpan(i, i * 2.0, i * 2.0 + 2.0),
                                    (lambda x: x / np.linalg.norm(x))(rng.normal(size=dim)).astype(np.float32),
                                    (i * 2.0 + 1,)) for i in range(clips_per_video))
        folder = "keep" if v < 2 else "other"
        results.append(VideoResult(VideoFile(f"/archive/{folder}/v{v}.mp4", 1, 1), f"fp{v}",
                                   VideoStatus.INDEXED, clips=clips))
    with IndexStore(str(tmp_path)) as store:
        store.register_model("seeded", "seeded", "x", dim, 32, 100.0)
        store.commit_results(results, IndexParams("seeded", 2.0, 1, "exact"), store.start_run("index", {}))
        store.save_faiss(store.build_faiss())
        ids, mats = zip(*store.load_vectors())
        ids, mats = np.concatenate(ids), np.concatenate(mats)
        paths = dict(store.con.execute(
            "SELECT c.clip_id, v.path FROM clips c JOIN videos v USING (video_id)").fetchall())
    s = Searcher(str(tmp_path))
    q = rng.normal(size=dim).astype(np.float32)
    q /= np.linalg.norm(q)
    hits = s.search_vector(q, k=8, filters=Filters(path_prefix="/archive/keep"), merge=False, per_video=10)
    assert len(hits) == 8
    keep = np.array([paths[int(i)].startswith("/archive/keep") for i in ids])
    exact = ids[keep][np.argsort(-(mats[keep] @ q))][:8]
    assert [h.clip_ids[0] for h in hits] == [int(i) for i in exact]


def test_missing_index_and_cli_output(colour_index, tmp_path):
    with pytest.raises(Exception, match="no index at"):
        Searcher(str(tmp_path / "missing"))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-m", "vidx", "search", "x", "--db", str(tmp_path / "missing")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "vidx index FOLDER" in out.stderr
    out = subprocess.run([sys.executable, "-m", "vidx", "search", "--db", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1 and "exactly one of" in out.stderr


def test_hit_formatting_and_play_command():
    from search import Hit, format_timestamp

    hit = Hit(path="/v/it's a \"clip\".mp4", video_id=1, start_s=3725.5, end_s=3730.25, score=0.31234,
              clip_ids=(4, 5))
    assert format_timestamp(3725.5) == "01:02:05.500"
    d = hit.as_dict()
    assert d["start"] == "01:02:05.500" and d["end"] == "01:02:10.250" and d["score"] == 0.3123
    import shlex

    argv = shlex.split(d["play"])
    assert argv[0] == "ffplay" and argv[-1] == "/v/it's a \"clip\".mp4" and "3725.500" in argv
    assert shlex.split(hit.play_command("mpv")) == ["mpv", "--start=3725.500", "/v/it's a \"clip\".mp4"]


def _catalog(paths: list[str], clips_per_video: list[int]):
    from search.searcher import _Catalog

    video_ids = np.arange(10, 10 + len(paths), dtype=np.int64)
    clip_video = np.concatenate([np.full(n, v, np.int64) for v, n in zip(video_ids, clips_per_video)] +
                                [np.array([999], np.int64)])  # a clip of no indexed video
    rng = np.random.default_rng(3)
    clip_video = clip_video[rng.permutation(len(clip_video))]  # clips of a video need not be adjacent
    n = len(clip_video)
    pos = np.searchsorted(video_ids, clip_video)
    pos = np.where((pos < len(video_ids)) & (video_ids[np.minimum(pos, len(video_ids) - 1)] == clip_video), pos, -1)
    return _Catalog(clip_ids=np.arange(100, 100 + n, dtype=np.int64), clip_video=clip_video,
                    clip_idx=np.zeros(n, np.int64), clip_start=np.zeros(n), clip_end=np.ones(n),
                    video_ids=video_ids, video_path=paths, video_duration=np.ones(len(paths)),
                    video_mtime_ns=np.zeros(len(paths), np.int64), video_indexed_at=np.zeros(len(paths)),
                    clip_video_pos=pos.astype(np.int64))


def test_videos_under_a_folder_or_a_file():
    paths = ["/a/keep/x.mp4", "/a/keeper/y.mp4", "/a/keep/sub/z.mp4", "/a/keep", "/b/w.mp4", "/a/keep.mp4"]
    cat = _catalog(paths, [1] * len(paths))
    under = lambda p: sorted(paths[i] for i in cat.videos_under(p))  # noqa: E731
    # a folder matches what is inside it (and a file of exactly that name), never a sibling prefix
    assert under("/a/keep") == ["/a/keep", "/a/keep/sub/z.mp4", "/a/keep/x.mp4"]
    assert under("/a/keep/") == ["/a/keep/sub/z.mp4", "/a/keep/x.mp4"]
    assert under("/a/keep.mp4") == ["/a/keep.mp4"]
    assert under("/a") == sorted(p for p in paths if p.startswith("/a/"))
    assert under("/nothing") == [] and under("/") == sorted(paths)


@pytest.mark.parametrize("chosen", [[], [0], [2, 5], list(range(9))])
def test_clip_rows_of_videos_equals_a_scan(chosen):
    cat = _catalog([f"/v/{i}.mp4" for i in range(9)], [3, 0, 5, 1, 2, 7, 1, 1, 4])
    rows = cat.clip_rows_of_videos(np.array(chosen, np.int64))
    expected = np.flatnonzero(np.isin(cat.clip_video_pos, chosen))
    assert sorted(rows.tolist()) == expected.tolist()


def test_searching_an_index_of_random_weights_warns(tmp_path, caplog):
    def one_video_index(path: Path, pretrained: str) -> str:
        clip = ClipEmbedding(ClipSpan(0, 0.0, 2.0), np.eye(8, dtype=np.float32)[0], (1.0,))
        with IndexStore(str(path)) as store:
            store.register_model(f"m|{pretrained}", "m", pretrained, 8, 32, 100.0)
            store.commit_results([VideoResult(VideoFile("/v/a.mp4", 1, 1), "fp", VideoStatus.INDEXED,
                                              clips=(clip,))],
                                 IndexParams(f"m|{pretrained}", 2.0, 1, "exact"), store.start_run("index", {}))
            store.save_faiss(store.build_faiss())
        return str(path)

    with caplog.at_level("WARNING"):
        Searcher(one_video_index(tmp_path / "real", "laion2b_s34b_b79k"))
    assert "RANDOM" not in caplog.text
    with caplog.at_level("WARNING"):
        s = Searcher(one_video_index(tmp_path / "random", "random"))
    assert "RANDOM weights" in caplog.text and "meaningless" in caplog.text
    assert len(s.search_vector(np.eye(8, dtype=np.float32)[0], k=1)) == 1  # a warning, not a refusal
