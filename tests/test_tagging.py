"""Zero-shot tagging (indexer.tagging) and ``vidx tags``: vocabularies, label bank scoring
with a deterministic colour embedder, shot/video consensus, tag filters, the custom
vocabulary round trip through the command line."""

from __future__ import annotations

import argparse
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from indexer import tagging
from indexer.store import IndexParams, IndexStore
from indexer.tagging import (LabelBank, Vocabulary, VocabularyError, clip_ids_with_tags, insert_clip_tags,
                             tag_clips, tag_shots_and_videos, tags_of_clips)
from indexer.types import ClipEmbedding, ClipSpan, VideoFile, VideoProbe, VideoResult, VideoStatus

DIM = 32  # vidx-tiny's embedding size
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
TINY_ID = "vidx-tiny|random:0"


def basis(i: int, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[i] = 1.0
    return v


def colour_vector(name: str) -> np.ndarray:
    return basis(COLOURS.index(name))


def encode_colours(texts: list[str]) -> np.ndarray:
    """Deterministic 'text encoder': a text naming a colour maps to that colour's basis vector."""
    out = []
    for text in texts:
        words = text.lower().replace(".", " ").split()
        hit = [c for c in COLOURS if c in words]
        out.append(colour_vector(hit[0]) if hit else basis(DIM - 1))
    return np.stack(out)


class ColourModel:
    """Stands in for LoadedModel: encode_text, logit_scale, spec.model_id."""

    def __init__(self, logit_scale: float = 2.0, model_id: str = "colour-test|0"):
        self.spec = SimpleNamespace(model_id=model_id)
        self.logit_scale = logit_scale
        self.calls = 0

    def encode_text(self, texts):
        self.calls += 1
        return encode_colours(list(texts))


def colour_vocab(labels=("red", "green", "blue", "yellow"), **kw) -> Vocabulary:
    return Vocabulary(name=kw.pop("name", "colours"), labels=tuple(labels),
                      templates=kw.pop("templates", ("a photo of {}.", "a {} thing.")), **kw)


# -- vocabularies ------------------------------------------------------------------------------------

def test_builtin_vocabularies():
    from torchvision.models._meta import _COCO_CATEGORIES, _KINETICS400_CATEGORIES

    actions, objects, scenes = tagging.builtin_vocabularies()
    assert actions.name == "actions" and list(actions.labels) == list(_KINETICS400_CATEGORIES)
    coco = [c for c in _COCO_CATEGORIES if c not in ("N/A", "__background__")]
    assert objects.name == "objects" and list(objects.labels[:80]) == coco
    assert "N/A" not in objects.labels and len(set(objects.labels)) == len(objects.labels)
    assert scenes.name == "scenes" and 90 <= len(scenes.labels) <= 130
    for label in ("beach", "night", "forest", "office", "street", "kitchen", "stage", "stadium", "snow",
                  "underwater"):
        assert label in scenes.labels
    assert scenes.phrases[scenes.labels.index("night")] == "a scene at night"
    for v in (actions, objects, scenes):
        assert len(v.templates) >= 2 and all("{}" in t for t in v.templates)
        assert 0 < v.threshold < 1 and v.top == 5
    assert "a video of a person abseiling." in actions.prompts()


def test_vocabulary_file_parsing(tmp_path):
    f = tmp_path / "my colours.txt"
    f.write_text("# my palette\n\nred\n# threshold: 0.3\n# top: 2\nGreen\n# template: a {} car.\n"
                 "sky = the blue sky\nred\n  # indented comment\n", encoding="utf-8")
    v = Vocabulary.from_file(f)
    assert v.name == "my colours"
    assert v.labels == ("red", "Green", "sky") and v.phrases == ("red", "Green", "the blue sky")
    assert v.threshold == 0.3 and v.top == 2 and v.templates == ("a {} car.",)
    assert v.prompts() == ["a red car.", "a Green car.", "a the blue sky car."]
    # text form round trip (what the index remembers)
    again = Vocabulary.parse(tagging.vocabulary_text(v), name="x")
    assert (again.name, again.labels, again.phrases, again.templates, again.threshold, again.top) == \
        (v.name, v.labels, v.phrases, v.templates, v.threshold, v.top)
    assert again.content_hash() == v.content_hash()
    # defaults: generic templates, threshold from the number of labels
    g = tmp_path / "pets.txt"
    g.write_text("cat\ndog\nhamster\nparrot\n")
    p = Vocabulary.from_file(g)
    assert p.templates == tagging.DEFAULT_TEMPLATES and p.threshold == pytest.approx(0.5)
    assert tagging.default_threshold(400) == pytest.approx(0.1)


@pytest.mark.parametrize("text, message", [
    ("# only comments\n\n", "no labels"),
    ("red\n# template: a photo\n", "has no {}"),
    ("red\n# threshold: high\n", "cannot read"),
    ("red\n# threshold: 2\n", "not a probability"),
])
def test_vocabulary_file_errors(tmp_path, text, message):
    f = tmp_path / "bad.txt"
    f.write_text(text)
    with pytest.raises(VocabularyError, match=message):
        Vocabulary.from_file(f)


def test_vocabulary_missing_file(tmp_path):
    with pytest.raises(VocabularyError, match="does not exist"):
        Vocabulary.from_file(tmp_path / "nope.txt")


def test_custom_file_replaces_builtin_of_same_name(tmp_path):
    f = tmp_path / "scenes.txt"
    f.write_text("beach\nnight\n")
    vocabs = tagging.load_vocabularies(("actions", "scenes"), [str(f)])
    assert [v.name for v in vocabs] == ["actions", "scenes"]
    assert vocabs[1].labels == ("beach", "night")


# -- label bank ---------------------------------------------------------------------------------------

def test_bank_scores_follow_the_logit_scale():
    model = ColourModel(logit_scale=2.0)
    bank = LabelBank.build(model, [colour_vocab()])
    assert bank.matrix.shape == (4, DIM)
    np.testing.assert_allclose(np.linalg.norm(bank.matrix, axis=1), 1.0, rtol=1e-6)
    vectors = np.stack([colour_vector("red"), colour_vector("blue"),
                        (colour_vector("red") + colour_vector("blue")) / math.sqrt(2)])
    probs = bank.probabilities(vectors)[0]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    expected = math.exp(2.0) / (math.exp(2.0) + 3)  # cosine 1 against three cosines 0
    assert probs[0, 0] == pytest.approx(expected, rel=1e-5)
    assert probs[1, 2] == pytest.approx(expected, rel=1e-5)
    half = math.exp(2.0 / math.sqrt(2)) / (2 * math.exp(2.0 / math.sqrt(2)) + 2)
    assert probs[2, 0] == pytest.approx(half, rel=1e-5) and probs[2, 2] == pytest.approx(half, rel=1e-5)
    tags = bank.tag(vectors)
    assert tags[0][0][:2] == ("colours", "red") and tags[0][0][2] == pytest.approx(expected, rel=1e-5)
    assert [t[1] for t in tags[1]] == ["blue"]
    assert sorted(t[1] for t in tags[2]) == ["blue", "red"]  # 0.40 each, above the 0.1 threshold


def test_bank_threshold_top_and_several_vocabularies():
    model = ColourModel(logit_scale=2.0)
    strict = colour_vocab(name="strict", threshold=0.75)  # the best label has 0.711
    top1 = colour_vocab(name="top1", threshold=0.1, top=1)
    warm = colour_vocab(("red", "orange", "yellow"), name="warm", threshold=0.2)
    bank = LabelBank.build(model, [strict, top1, warm])
    assert bank.offsets == (0, 4, 8, 11)
    mixed = (colour_vector("red") + colour_vector("blue")) / math.sqrt(2)
    rows = bank.tag(np.stack([colour_vector("red"), mixed, colour_vector("green")]))
    assert [t[:2] for t in rows[0]] == [("top1", "red"), ("warm", "red")]
    assert len([t for t in rows[1] if t[0] == "top1"]) == 1  # a tie, cut to top 1
    # green against warm colours: uniform 1/3 each, above 0.2, best first then by position
    assert [t[1] for t in rows[2] if t[0] == "warm"] == ["red", "orange", "yellow"]
    assert all(t[2] == pytest.approx(1 / 3) for t in rows[2] if t[0] == "warm")
    # vectors are normalised before scoring; a wrong size is refused
    assert bank.tag(3.0 * colour_vector("red")[None])[0][:2] == rows[0][:2]
    with pytest.raises(ValueError, match="dimensions"):
        bank.tag(np.ones((1, 8), np.float32))
    assert bank.tag(np.zeros((0, DIM), np.float32)) == []
    sub = bank.subset(["warm"])
    assert sub.names == ["warm"] and sub.matrix.shape == (3, DIM)


def test_bank_prompt_ensemble_is_mean_of_templates():
    class TwoTemplates(ColourModel):
        def encode_text(self, texts):
            # template 2 ("a {} thing.") points at the colour, template 1 elsewhere
            return np.stack([colour_vector(t.split()[1]) if t.endswith("thing.") else basis(DIM - 2)
                             for t in texts])

    bank = LabelBank.build(TwoTemplates(), [colour_vocab(("red", "green"))])
    expected = (colour_vector("red") + basis(DIM - 2)) / math.sqrt(2)
    np.testing.assert_allclose(bank.matrix[0], expected, atol=1e-6)


def test_bank_cache(tmp_path):
    cache = tmp_path / "labels"
    model = ColourModel()
    first = LabelBank.build(model, [colour_vocab()], str(cache))
    assert model.calls == 1 and len(list(cache.glob("*.npy"))) == 1
    again = LabelBank.build(model, [colour_vocab(threshold=0.5)], str(cache))  # threshold: same vectors
    assert model.calls == 1
    np.testing.assert_array_equal(first.matrix, again.matrix)
    LabelBank.build(model, [colour_vocab(("red", "green"))], str(cache))  # other labels: encoded
    LabelBank.build(ColourModel(model_id="other|0"), [colour_vocab()], str(cache))  # other model
    assert model.calls == 2 and len(list(cache.glob("*.npy"))) == 3
    loaded = LabelBank.load(str(cache), "colour-test|0", [colour_vocab()], logit_scale=2.0)
    np.testing.assert_array_equal(loaded.matrix, first.matrix)
    assert LabelBank.load(str(cache), "colour-test|0", [colour_vocab(("x", "y"))], 2.0) is None
    # a damaged cache file is re-encoded, not trusted
    for f in cache.glob("*.npy"):
        f.write_bytes(b"garbage")
    LabelBank.build(model, [colour_vocab()], str(cache))
    assert model.calls == 3
    # the bank travels between processes (Ray) by pickling
    import pickle

    clone = pickle.loads(pickle.dumps(first))
    assert clone.tag(colour_vector("red")[None]) == first.tag(colour_vector("red")[None])


def test_bank_with_the_real_tiny_model(tmp_path):
    """The built-in vocabularies through open_clip's tokenizer and text tower (random weights)."""
    from indexer.model import LoadedModel, resolve_model

    model = LoadedModel(resolve_model("vidx-tiny", "random"))
    vocabs = tagging.builtin_vocabularies()
    bank = LabelBank.build(model, vocabs, str(tmp_path / "labels"))
    assert bank.matrix.shape == (sum(len(v.labels) for v in vocabs), model.dim)
    assert bank.logit_scale == pytest.approx(model.logit_scale)
    rows = bank.tag(np.random.default_rng(0).normal(size=(16, model.dim)).astype(np.float32))
    assert len(rows) == 16
    for row in rows:
        for vocab, label, p in row:
            v = next(x for x in vocabs if x.name == vocab)
            assert label in v.labels and v.threshold <= p <= 1.0
        assert all(sum(t[0] == v.name for t in row) <= v.top for v in vocabs)


# -- storage, consensus, filters -----------------------------------------------------------------------

def _probe(duration: float, fps: float = 25.0) -> VideoProbe:
    return VideoProbe(container="mov,mp4", codec="h264", duration_s=duration, duration_source="stream",
                      start_time_s=0.0, avg_fps=fps, base_fps=fps, variable_frame_rate=False,
                      n_frames=int(round(duration * fps)), width=160, height=120, display_width=160,
                      display_height=120, rotation_deg=0, sample_aspect_ratio=1.0, has_audio=False,
                      video_stream_index=0)


def colour_result(path: str, spans: list[tuple[float, float]], colours: list[str]) -> VideoResult:
    clips = tuple(ClipEmbedding(ClipSpan(i, s, e), colour_vector(c), ((s + e) / 2,))
                  for i, ((s, e), c) in enumerate(zip(spans, colours)))
    return VideoResult(file=VideoFile(path=path, size_bytes=100, mtime_ns=1), fingerprint=f"fp-{path}",
                       status=VideoStatus.INDEXED, probe=_probe(spans[-1][1]), clips=clips,
                       video_vector=colour_vector(colours[0]), frames_embedded=len(clips))


def add_shots(con, video_id: int, bounds: list[float], fps: float = 25.0) -> list[int]:
    ids = []
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        sid = con.execute("SELECT nextval('shot_ids')").fetchall()[0][0]
        con.execute("INSERT INTO shots VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [sid, video_id, i, s, e, round(s * fps), round(e * fps), "cut"])
        ids.append(sid)
    return ids


MODEL = "colour-test|0"


@pytest.fixture
def colour_store(index_dir):
    """One video: clips red [0,2) red [2,4) blue [4,6) green [6,10); shots [0,4) [4,10).
    A second video without shots: yellow, yellow."""
    store = IndexStore(str(index_dir)).open()
    store.register_model(MODEL, "colour", "test", DIM, 32, 10.0)
    store.commit_results([colour_result("/v/a.mp4", [(0, 2), (2, 4), (4, 6), (6, 10)],
                                        ["red", "red", "blue", "green"]),
                          colour_result("/v/b.mp4", [(0, 3), (3, 6)], ["yellow", "yellow"])],
                         IndexParams(MODEL, 2.0, 1, "exact"), run_id=1)
    vids = dict(store.con.execute("SELECT path, video_id FROM videos").fetchall())
    add_shots(store.con, vids["/v/a.mp4"], [0.0, 4.0, 10.0])
    yield store, vids
    store.close()


def clip_id(store, path: str, idx: int) -> int:
    return store.con.execute("SELECT clip_id FROM clips JOIN videos USING (video_id) WHERE path = ? AND idx = ?",
                             [path, idx]).fetchall()[0][0]


def test_clip_tags_and_consensus(colour_store):
    store, vids = colour_store
    con = store.con
    bank = LabelBank.build(ColourModel(logit_scale=10.0), [colour_vocab(("red", "green", "blue", "yellow"),
                                                                        threshold=0.3)])
    n = tag_clips(con, bank, list(vids.values()))
    assert n == 6
    rows = con.execute("SELECT c.idx, t.label, t.score FROM clip_tags t JOIN clips c USING (clip_id) "
                       "WHERE c.video_id = ? ORDER BY c.idx", [vids["/v/a.mp4"]]).fetchall()
    assert [(r[0], r[1]) for r in rows] == [(0, "red"), (1, "red"), (2, "blue"), (3, "green")]
    assert all(r[2] > 0.99 for r in rows)
    assert tag_clips(con, bank, list(vids.values())) == 6  # replaced, not duplicated
    assert con.execute("SELECT count(*) FROM clip_tags").fetchall()[0][0] == 6

    n_shot, n_video = tag_shots_and_videos(con, bank, list(vids.values()))
    shot = {(r[0], r[1]): r[2] for r in con.execute(
        "SELECT s.idx, t.label, t.score FROM shot_tags t JOIN shots s USING (shot_id)").fetchall()}
    # duration-weighted mean of clip probabilities: shot 2 is blue 2 s + green 4 s
    assert set(shot) == {(0, "red"), (1, "green"), (1, "blue")}
    assert shot[(0, "red")] == pytest.approx(1.0, abs=1e-3)
    assert shot[(1, "green")] == pytest.approx(2 / 3, abs=1e-3)
    assert shot[(1, "blue")] == pytest.approx(1 / 3, abs=1e-3)
    video = {(r[0], r[1]): r[2] for r in con.execute("SELECT video_id, label, score FROM video_tags").fetchall()}
    a, b = vids["/v/a.mp4"], vids["/v/b.mp4"]
    assert set(video) == {(a, "red"), (a, "green"), (b, "yellow")}  # blue (0.2) is under 0.3
    assert video[(a, "red")] == pytest.approx(0.4, abs=1e-3)
    assert (n_shot, n_video) == (3, 3)
    assert tag_shots_and_videos(con, bank, list(vids.values())) == (3, 3)
    assert tag_shots_and_videos(con, bank, list(vids.values()), videos_per_batch=1) == (3, 3)
    assert tag_clips(con, bank, list(vids.values()), videos_per_batch=1) == 6
    assert con.execute("SELECT count(*) FROM shot_tags").fetchall()[0][0] == 3

    # another vocabulary is added beside, not instead
    other = LabelBank.build(ColourModel(logit_scale=10.0), [colour_vocab(("red", "purple"), name="two")])
    tag_clips(con, other, [a])
    assert con.execute("SELECT count(DISTINCT vocabulary) FROM clip_tags").fetchall()[0][0] == 2
    tagging.delete_tags_of_videos(con, [a])
    assert con.execute("SELECT count(*) FROM clip_tags").fetchall()[0][0] == 2  # b's yellows
    assert con.execute("SELECT count(*) FROM shot_tags").fetchall()[0][0] == 0


def test_tags_from_the_model_actor_path(colour_store):
    """What the indexing actor does: bank.tag on fresh vectors, insert_clip_tags with their ids."""
    store, vids = colour_store
    bank = LabelBank.build(ColourModel(logit_scale=10.0), [colour_vocab()])
    ids = [clip_id(store, "/v/a.mp4", i) for i in range(4)]
    tags = bank.tag(np.stack([colour_vector(c) for c in ("red", "red", "blue", "green")]))
    assert insert_clip_tags(store.con, ids, tags) == 4
    assert insert_clip_tags(store.con, [], []) == 0
    with pytest.raises(ValueError):
        insert_clip_tags(store.con, ids[:2], tags)


def test_clip_ids_with_tags(colour_store):
    store, vids = colour_store
    con = store.con
    bank = LabelBank.build(ColourModel(logit_scale=10.0), [colour_vocab(threshold=0.3)])
    tag_clips(con, bank, list(vids.values()))
    tag_shots_and_videos(con, bank, list(vids.values()))
    a = [clip_id(store, "/v/a.mp4", i) for i in range(4)]
    b = [clip_id(store, "/v/b.mp4", i) for i in range(2)]

    assert clip_ids_with_tags(con, ["red"]).tolist() == a[:2]
    assert clip_ids_with_tags(con, ["GREEN"], levels=("clip",)).tolist() == [a[3]]
    assert clip_ids_with_tags(con, ["green"]).tolist() == a[2:]  # shot 2 is green
    assert clip_ids_with_tags(con, ["green"], levels=("clip", "shot", "video")).tolist() == a
    assert clip_ids_with_tags(con, ["red", "green"]).tolist() == []  # AND
    assert clip_ids_with_tags(con, ["red", "green"], levels=("video",)).tolist() == a
    assert clip_ids_with_tags(con, ["colours:yellow"]).tolist() == b
    assert clip_ids_with_tags(con, ["nope:yellow"]).tolist() == []
    assert clip_ids_with_tags(con, ["blue"], min_score=0.5).tolist() == [a[2]]
    assert clip_ids_with_tags(con, []).tolist() == []
    out = clip_ids_with_tags(con, ["red"])
    assert out.dtype == np.int64
    with pytest.raises(ValueError, match="levels"):
        clip_ids_with_tags(con, ["red"], levels=("frame",))
    shown = tags_of_clips(con, a + b, top=2)
    assert shown[a[0]] == ("red",) and shown[b[1]] == ("yellow",)


def test_stored_vocabularies(colour_store):
    store, _ = colour_store
    v = colour_vocab(("red", "sky"), name="mine")
    tagging.remember_vocabulary(store.con, v)
    tagging.remember_vocabulary(store.con, v)
    (got,) = tagging.stored_vocabularies(store.con)
    assert got.name == "mine" and got.labels == v.labels and got.content_hash() == v.content_hash()


# -- vidx tags ---------------------------------------------------------------------------------------

def run_cli(argv: list[str]) -> int:
    """vidx with only this module's commands (independent of how vidx.cli wires them)."""
    from vidx.scenes_cli import add_parsers

    parser = argparse.ArgumentParser(prog="vidx")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture
def tiny_colour_index(index_dir, monkeypatch):
    """An index 'built' with vidx-tiny (random) whose clip vectors are colour basis vectors,
    and a text encoder that maps colour words to them."""
    from indexer.model import LoadedModel

    monkeypatch.setattr(LoadedModel, "encode_text", lambda self, texts: encode_colours(list(texts)))
    with IndexStore(str(index_dir)) as store:
        store.register_model(TINY_ID, "vidx-tiny", "random", DIM, 32, 1 / 0.07)
        store.commit_results([colour_result("/v/a.mp4", [(0, 2), (2, 4), (4, 6), (6, 10)],
                                            ["red", "red", "blue", "green"]),
                              colour_result("/v/b.mp4", [(0, 3), (3, 6)], ["yellow", "yellow"])],
                             IndexParams(TINY_ID, 2.0, 1, "exact"), run_id=1)
        vid = store.con.execute("SELECT video_id FROM videos WHERE path = '/v/a.mp4'").fetchall()[0][0]
        add_shots(store.con, vid, [0.0, 4.0, 10.0])
    return index_dir


def test_custom_vocabulary_round_trip(tiny_colour_index, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    labels = tmp_path / "palette.txt"
    labels.write_text("# colours we care about\nred\ngreen\nblue\nyellow\n# threshold: 0.3\n")
    db = str(tiny_colour_index)
    assert run_cli(["tags", "--db", db, "--labels", str(labels), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["applied"]["vocabulary"] == "palette" and out["applied"]["clip_tags"] == 6
    # label vectors are cached per user (shared by every index), not in the index
    assert len(list((tmp_path / "cache" / "vidx" / "labels").glob("*.npy"))) == 1
    assert not (tiny_colour_index / "labels").exists()

    assert run_cli(["tags", "--db", db, "--json"]) == 0
    counts = {c["label"]: c for c in json.loads(capsys.readouterr().out)}
    assert set(counts) == {"red", "green", "blue", "yellow"}
    assert counts["red"] == {"vocabulary": "palette", "label": "red", "clips": 2, "shots": 1, "videos": 1,
                             "video_tags": 1}
    assert counts["yellow"]["clips"] == 2 and counts["yellow"]["shots"] == 0
    assert counts["blue"]["video_tags"] == 0  # 2 s of 10: not the video as a whole

    assert run_cli(["tags", "--db", db, "--label", "green", "--json"]) == 0
    (video,) = json.loads(capsys.readouterr().out)["videos"]
    assert video["path"] == "/v/a.mp4" and video["video_score"] == pytest.approx(0.4, abs=1e-3)
    assert [s["shot"] for s in video["shots"]] == [2]
    assert video["shots"][0]["start_tc"] == "00:00:04:00" and video["shots"][0]["end_tc"] == "00:00:10:00"
    assert [c["start_s"] for c in video["clips"]] == [6.0]

    assert run_cli(["tags", "--db", db, "--vocabulary", "nothing"]) == 0
    assert "no tags" in capsys.readouterr().out
    assert run_cli(["tags", "--db", db, "-n", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and table[1].split()[:2] == ["palette", "red"]
    assert run_cli(["tags", "--db", db, "--label", "palette:red"]) == 0
    assert "/v/a.mp4" in capsys.readouterr().out

    with IndexStore(db, read_only=True) as store:
        assert [v.name for v in tagging.stored_vocabularies(store.con)] == ["palette"]


def test_tags_errors(tiny_colour_index, tmp_path):
    from indexer.config import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        run_cli(["tags", "--db", str(tiny_colour_index), "--labels", str(tmp_path / "missing.txt")])
    with pytest.raises(ConfigError, match="-n"):
        run_cli(["tags", "--db", str(tiny_colour_index), "-n", "0"])
