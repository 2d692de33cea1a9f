"""Moderation: policy parsing and errors, scoring, incremental scans, review, resume, locks, CLI.

Fast: the index is hand-made (IndexStore.commit_results with clip vectors chosen to match
given prompts) and prompts are embedded by a deterministic stand-in for the model, so
the expected flags are known exactly; no Ray, no model download.
"""

from __future__ import annotations

import argparse
import dataclasses
import csv
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.clips import snippet_times
from indexer.moderation import (DEFAULT_POLICY, ModerationError, ModerationStore, PolicyError, ScanLock,
                                build_prompt_bank, load_policy, parse_policy, parse_since)
from indexer.store import IndexParams, IndexStore
from indexer.types import ClipEmbedding, ClipSpan, VideoFile, VideoResult, VideoStatus
from pipelines.moderate import ScanOptions, scan
from conftest import make_color_video

REPO = Path(__file__).resolve().parents[1]
DIM = 32
MODEL_ID = "vidx-tiny|random:0"

POLICY = """\
name = "test"
templates = ["{}"]
common_negatives = ["people talking", "a landscape"]

[categories.weapons]
label = "Weapons"
severity = "medium"
threshold = 0.9
positives = ["a handgun", "a rifle"]
negatives = ["a power drill"]

[categories.drugs]
severity = "high"
threshold = 0.9
positives = ["lines of white powder"]
negatives = ["flour in a kitchen"]
"""

# Video A: handgun, talking, landscape, rifle. Video B: powder, talking, drill.
LAYOUT = {"a.mp4": ["a handgun", "people talking", "a landscape", "a rifle"],
          "b.mp4": ["lines of white powder", "people talking", "a power drill"]}
EXPECTED = {("a.mp4", 0, "weapons"), ("a.mp4", 3, "weapons"), ("b.mp4", 0, "drugs")}


VOCAB = ("a handgun", "a rifle", "a power drill", "people talking", "a landscape", "lines of white powder",
         "flour in a kitchen", "a kettle", "an assault rifle")


def fake_embed(texts: list[str]) -> np.ndarray:
    """A deterministic 'text encoder': orthogonal unit vectors for the test prompts (so a clip made
    of one prompt's vector matches that prompt only), a fixed random unit vector for other texts."""
    out = []
    for t in texts:
        if t in VOCAB:
            v = np.zeros(DIM, np.float32)
            v[VOCAB.index(t)] = 1.0
        else:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
        out.append(v / np.linalg.norm(v))
    return np.stack(out)


def make_index(index_dir: Path, video_dir: Path, layout: dict[str, list[str]] = LAYOUT,
               fingerprints: dict[str, str] | None = None) -> None:
    """An index whose clip vectors are exactly the fake embeddings of the given prompts."""
    results = []
    for name, prompts in layout.items():
        path = video_dir / name
        if not path.exists():
            make_color_video(path, ["red", "green", "blue", "yellow"][:len(prompts)], seconds_each=2.0)
        st = path.stat()
        vectors = fake_embed(prompts)
        clips = []
        for i, v in enumerate(vectors):
            span = ClipSpan(i, 2.0 * i, 2.0 * (i + 1))
            clips.append(ClipEmbedding(span, v, snippet_times(span, 3)))
        fp = (fingerprints or {}).get(name, f"fp-{name}")
        results.append(VideoResult(file=VideoFile(str(path), st.st_size, st.st_mtime_ns), fingerprint=fp,
                                   status=VideoStatus.INDEXED, clips=tuple(clips)))
    with IndexStore(str(index_dir)) as store:
        store.register_model(MODEL_ID, "vidx-tiny", "random", DIM, 32, 100.0)
        run_id = store.start_run("index", {})
        store.commit_results(results, IndexParams(MODEL_ID, 2.0, 3, "exact"), run_id)
        store.finish_run(run_id, "ok", {})


def seed_text_cache(index_dir: Path, policy_text: str) -> None:
    """Put the fake embeddings of a policy's prompts in the index's text cache (the CLI then loads no model)."""
    policy = parse_policy(policy_text)
    texts = {t.format(p) for c in policy.categories for p in (*c.positives, *policy.negatives_of(c))
             for t in policy.templates}
    with IndexStore(str(index_dir)) as store:
        m = ModerationStore(store)
        m.ensure_schema()
        have = m.cached_text_vectors(MODEL_ID, sorted(texts))
        m.store_text_vectors(MODEL_ID, {t: v for t, v in zip(sorted(texts), fake_embed(sorted(texts)))
                                        if t not in have})


@pytest.fixture
def env(tmp_path, tiny_settings):
    videos = tmp_path / "videos"
    videos.mkdir()
    make_index(Path(tiny_settings.index_dir), videos)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    return argparse.Namespace(settings=tiny_settings, videos=videos, policy=policy, tmp=tmp_path)


def run_scan(env, policy_text: str | None = None, **kw):
    if policy_text is not None:
        env.policy.write_text(policy_text)
    options = ScanOptions(policy_path=str(env.policy), nudenet=False, **kw)
    return scan(env.settings, options, text_encoder=fake_embed)


def flag_keys(settings, status=None) -> set:
    with IndexStore(settings.index_dir, read_only=True) as store:
        rows = store.con.execute(
            "SELECT f.path, c.idx, f.category FROM moderation_flags f JOIN clips c USING (clip_id)"
            + (" WHERE f.status = ?" if status else ""), [status] if status else []).fetchall()
    return {(os.path.basename(p), i, c) for p, i, c in rows}


def db_rows(settings, sql, params=()):
    with IndexStore(settings.index_dir, read_only=True) as store:
        return store.con.execute(sql, list(params)).fetchall()


def cli(*argv: str) -> int:
    from vidx import moderate_cli

    parser = argparse.ArgumentParser(prog="vidx")
    moderate_cli.add_parser(parser.add_subparsers(dest="command"))
    return moderate_cli.run(parser.parse_args(["moderate", *argv]))


# ============================================================================ policy


def test_default_policy_loads_with_the_five_categories_and_nudenet():
    policy = load_policy()
    assert policy.source == str(DEFAULT_POLICY)
    assert {c.key for c in policy.categories} == {"sexual", "violence", "weapons", "drugs", "self_harm"}
    for c in policy.categories:
        assert c.positives and policy.negatives_of(c) and 0 < c.threshold < 1
    assert policy.nudenet is not None and policy.nudenet.category == "sexual"
    assert len(policy.version) == 16 and policy.version == load_policy(DEFAULT_POLICY).version


def test_version_ignores_formatting_order_duplicates_and_labels():
    base = parse_policy(POLICY)
    reordered = textwrap.dedent("""\
        # the same policy, written differently
        common_negatives = ["a landscape", "people  talking", "a landscape"]
        templates = ["{}"]
        name = "renamed"
        [categories.drugs]
        positives = ["lines of white powder"]
        threshold = 0.90
        negatives = ["flour in a kitchen"]
        severity = "high"
        label = "Narcotics"
        [categories.weapons]
        negatives = ["a power drill"]
        positives = ["a rifle", "a handgun"]
        severity = "medium"
        threshold = 0.9
        """)
    assert parse_policy(reordered).version == base.version
    changed = parse_policy(POLICY.replace("threshold = 0.9\npositives = [\"a handgun\"",
                                          "threshold = 0.8\npositives = [\"a handgun\""))
    assert changed.version != base.version


def test_detector_versions_change_only_with_their_part_of_the_policy():
    with_nn = POLICY + '\n[nudenet]\ncategory = "drugs"\nthreshold = 0.6\nclasses = ["BUTTOCKS_EXPOSED"]\n'
    a = parse_policy(with_nn)
    prompts_changed = parse_policy(with_nn.replace('"a rifle"', '"an assault rifle"'))
    nn_changed = parse_policy(with_nn.replace("threshold = 0.6", "threshold = 0.7"))
    assert prompts_changed.detector_version("embedding") != a.detector_version("embedding")
    assert prompts_changed.detector_version("nudenet") == a.detector_version("nudenet")
    assert nn_changed.detector_version("nudenet") != a.detector_version("nudenet")
    assert nn_changed.detector_version("embedding") == a.detector_version("embedding")
    assert len({a.version, prompts_changed.version, nn_changed.version}) == 3


@pytest.mark.parametrize("text, where, words", [
    ('name = "x"\n[categories.a]\nthreshold = 0.5\npositives = ["p"\nnegatives = ["n"]\n',
     ":5:", "invalid TOML"),
    ('name = "x"\n[categories.a]\nthreshold = 1.5\npositives = ["p"]\nnegatives = ["n"]\n',
     ":3:", "categories.a.threshold: must be between 0 and 1"),
    ('name = "x"\n\n[categories.a]\npositives = ["p"]\nnegatives = ["n"]\n',
     ":3:", "categories.a.threshold: is missing"),
    ('name = "x"\n[categories.a]\nthreshold = 0.5\ntreshold = 0.5\npositives = ["p"]\nnegatives = ["n"]\n',
     ":4:", "did you mean 'threshold'"),
    ('[categories.a]\nthreshold = 0.5\npositives = ["p"]\n',
     ":1:", "no negative prompt"),
    ('[categories.a]\nthreshold = 0.5\nseverity = "urgent"\npositives = ["p"]\nnegatives = ["n"]\n',
     ":3:", "must be one of low, medium, high, critical"),
    ('[categories.a]\nthreshold = "high"\npositives = ["p"]\nnegatives = ["n"]\n',
     ":2:", "must be a number"),
    ('[categories.a]\nthreshold = 0.5\npositives = []\nnegatives = ["n"]\n',
     ":3:", "must not be empty"),
    ('[categories.a]\nthreshold = 0.5\npositives = ["p", 3]\nnegatives = ["n"]\n',
     ":3:", "item 2 must be a string"),
    ('templates = ["a video"]\n[categories.a]\nthreshold = 0.5\npositives = ["p"]\nnegatives = ["n"]\n',
     ":1:", "must contain '{}'"),
    ('name = "x"\n', "", "at least one category"),
    ('[categories.a]\nthreshold = 0.5\npositives = ["p"]\nnegatives = ["n"]\n[nudenet]\ncategory = "b"\n'
     'threshold = 0.5\nclasses = ["FEMALE_BREAST_EXPOSED"]\n', ":6:", "names no category"),
    ('[categories.a]\nthreshold = 0.5\npositives = ["p"]\nnegatives = ["n"]\n[nudenet]\ncategory = "a"\n'
     'threshold = 0.5\nclasses = ["BREAST_EXPOSED"]\n', ":8:", "not a NudeNet class"),
])
def test_invalid_policy_names_line_key_and_problem(tmp_path, text, where, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    assert where in msg.split(" ")[0] if where else True, msg
    assert words in msg, msg


def test_policy_file_errors(tmp_path):
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "missing.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'name = "x"\n# caf\xe9\n')
    with pytest.raises(PolicyError, match=r"latin1.toml:2: policy file is not UTF-8"):
        load_policy(bad)


def test_parse_since():
    assert parse_since("2024-05-01").isoformat() == "2024-05-01T00:00:00"
    assert parse_since("36h", now=1_000_000.0).timestamp() == pytest.approx(1_000_000.0 - 36 * 3600)
    with pytest.raises(ModerationError, match="--since"):
        parse_since("yesterday")


# ============================================================================ scoring


def test_score_is_softmax_mass_of_positives_and_matches_a_reference():
    policy = parse_policy(POLICY)
    bank = build_prompt_bank(policy, fake_embed, logit_scale=50.0)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((257, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = bank.score(vectors)
    assert scores.shape == (257, 2) and (scores >= 0).all() and (scores <= 1).all()
    for c, cat in enumerate(policy.categories):
        pos = fake_embed(list(cat.positives))
        neg = fake_embed(list(policy.negatives_of(cat)))
        for i in (0, 100, 256):
            logits = 50.0 * np.concatenate([pos @ vectors[i], neg @ vectors[i]]).astype(np.float64)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            assert scores[i, c] == pytest.approx(p[:len(pos)].sum(), abs=1e-5)
    # A vector equal to a positive prompt scores ~1, equal to a negative ~0.
    s = bank.score(fake_embed(["a handgun", "people talking"]))
    assert s[0, 0] > 0.99 and s[1, 0] < 0.01


def test_policy_logit_scale_overrides_the_model():
    policy = parse_policy(POLICY + "")
    custom = parse_policy("logit_scale = 10\n" + POLICY)
    assert build_prompt_bank(policy, fake_embed, 100.0).logit_scale == 100.0
    assert build_prompt_bank(custom, fake_embed, 100.0).logit_scale == 10.0


# ============================================================================ scans


def test_scan_flags_exactly_the_matching_clips_then_nothing_new(env):
    first = run_scan(env)
    assert first.exit_code == 1 and first.new_flags == 3
    assert first.embedding_scanned == 7 and first.clips_in_scope == 7
    assert flag_keys(env.settings) == EXPECTED
    flags = {(os.path.basename(f["path"]), f["category"]): f for f in first.flags}
    assert flags[("b.mp4", "drugs")]["severity"] == "high"
    assert flags[("a.mp4", "weapons")]["label"] == "Weapons"
    assert flags[("a.mp4", "weapons")]["score"] > 0.99

    second = run_scan(env)
    assert second.exit_code == 0 and second.new_flags == 0 and second.embedding_scanned == 0
    assert flag_keys(env.settings) == EXPECTED
    runs = db_rows(env.settings, "SELECT run_id, policy_version, status, embedding_scanned, new_flags "
                                 "FROM moderation_runs ORDER BY run_id")
    assert [(r[2], r[3], r[4]) for r in runs] == [("ok", 7, 3), ("ok", 0, 0)]
    assert {r[1] for r in runs} == {first.policy_version}
    kinds = db_rows(env.settings, "SELECT kind, status FROM runs WHERE kind = 'moderate'")
    assert kinds == [("moderate", "ok")] * 2


def test_new_clips_are_scanned_incrementally(env):
    run_scan(env)
    layout = {"c.mp4": ["a rifle", "a landscape"]}
    make_index(Path(env.settings.index_dir), env.videos, layout)
    s = run_scan(env)
    assert s.embedding_scanned == 2 and s.new_flags == 1 and s.exit_code == 1
    assert ("c.mp4", 0, "weapons") in flag_keys(env.settings)


def test_policy_change_rescans_everything_without_duplicates(env):
    run_scan(env)
    v2 = POLICY.replace('positives = ["a handgun", "a rifle"]\nnegatives = ["a power drill"]',
                        'positives = ["a handgun", "a rifle", "a power drill"]\nnegatives = ["a kettle"]')
    s = run_scan(env, v2)
    assert s.embedding_scanned == 7 and s.new_flags == 1 and s.exit_code == 1
    assert flag_keys(env.settings) == EXPECTED | {("b.mp4", 2, "weapons")}
    dup = db_rows(env.settings, "SELECT clip_id, category, count(*) FROM moderation_flags GROUP BY ALL HAVING count(*) > 1")
    assert dup == []
    # Open flags carry the policy version that last saw them.
    versions = {r[0] for r in db_rows(env.settings, "SELECT DISTINCT policy_version FROM moderation_flags")}
    assert versions == {s.policy_version}
    assert run_scan(env, v2).exit_code == 0


def test_review_decisions_persist_across_scans_and_policy_versions(env):
    run_scan(env)
    rows = db_rows(env.settings, "SELECT flag_id, path, category, start_s FROM moderation_flags")
    ids = {(os.path.basename(p), c, s): i for i, p, c, s in rows}
    handgun, powder = ids[("a.mp4", "weapons", 0.0)], ids[("b.mp4", "drugs", 0.0)]
    assert cli("review", "--db", env.settings.index_dir, "--clear", str(handgun), "--note", "a prop") == 0
    assert cli("review", "--db", env.settings.index_dir, "--confirm", str(powder), "--reviewer", "ana") == 0

    # A new policy version (lower thresholds) rescans every clip: decisions stay as they are.
    s = run_scan(env, POLICY.replace("threshold = 0.9", "threshold = 0.5"))
    assert s.embedding_scanned == 7 and s.new_flags == 0
    status = {r[0]: r[1:] for r in db_rows(env.settings, "SELECT flag_id, status, reviewer, note FROM moderation_flags")}
    assert status[handgun][0] == "cleared" and status[handgun][2] == "a prop"
    assert status[powder][:2] == ("confirmed", "ana")
    assert len(status) == 3
    history = db_rows(env.settings, "SELECT flag_id, decision FROM moderation_decisions ORDER BY flag_id")
    assert sorted(history) == sorted([(handgun, "cleared"), (powder, "confirmed")])
    # --rescan forces scoring again; still nothing comes back.
    assert run_scan(env, rescan=True).new_flags == 0
    marks = db_rows(env.settings, "SELECT clip_id, detector_version, count(*) FROM moderation_scanned "
                                  "GROUP BY ALL HAVING count(*) > 1")
    assert marks == []


def test_cleared_content_is_not_flagged_again_in_a_byte_identical_copy(env):
    run_scan(env)
    handgun = db_rows(env.settings, "SELECT flag_id FROM moderation_flags WHERE category = 'weapons' "
                                    "AND start_s = 0")[0][0]
    with IndexStore(env.settings.index_dir) as store:
        ModerationStore(store).decide([handgun], "clear", "bob", None)
    # The indexer clones a byte-identical copy (same fingerprint): new clip ids, same content.
    make_index(Path(env.settings.index_dir), env.videos, {"copy.mp4": LAYOUT["a.mp4"]},
               fingerprints={"copy.mp4": "fp-a.mp4"})
    s = run_scan(env)
    assert s.embedding_scanned == 4
    assert {(os.path.basename(f["path"]), f["start_s"]) for f in s.flags} == {("copy.mp4", 6.0)}


def test_interrupted_scan_resumes_without_losing_or_duplicating_flags(env, tmp_path, tiny_settings):
    calls = {"written": 0}

    def crash_in_second_batch(stage):
        if stage == "batch_written":
            calls["written"] += 1
            if calls["written"] == 2:
                raise RuntimeError("power cut")

    env.policy.write_text(POLICY)
    with pytest.raises(RuntimeError, match="power cut"):
        scan(env.settings, ScanOptions(policy_path=str(env.policy), nudenet=False, batch_clips=2),
             text_encoder=fake_embed, hook=crash_in_second_batch)
    # Only the first batch (2 clips) is kept; the run is recorded as failed.
    assert db_rows(env.settings, "SELECT count(*) FROM moderation_scanned")[0][0] == 2
    assert db_rows(env.settings, "SELECT status, embedding_scanned FROM moderation_runs") == [("error", 2)]
    resumed = run_scan(env, batch_clips=2)
    assert resumed.embedding_scanned == 5
    assert flag_keys(env.settings) == EXPECTED
    assert db_rows(env.settings, "SELECT count(*), count(DISTINCT (clip_id, category)) FROM moderation_flags")[0] == (3, 3)
    assert db_rows(env.settings, "SELECT count(*), count(DISTINCT clip_id) FROM moderation_scanned")[0] == (7, 7)
    assert run_scan(env).exit_code == 0


def test_crash_right_after_a_commit_loses_nothing(env):
    def crash_after_first_commit(stage):
        if stage == "batch_committed":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan(env.settings, ScanOptions(policy_path=str(env.policy), nudenet=False, batch_clips=4),
             text_encoder=fake_embed, hook=crash_after_first_commit)
    assert db_rows(env.settings, "SELECT status FROM moderation_runs") == [("interrupted",)]
    again = run_scan(env)
    assert again.embedding_scanned == 3
    assert flag_keys(env.settings) == EXPECTED


def test_scope_by_path_and_since(env):
    s = run_scan(env, paths=(str(env.videos / "b.mp4"),))
    assert s.clips_in_scope == 3 and s.embedding_scanned == 3
    assert flag_keys(env.settings) == {("b.mp4", 0, "drugs")}
    from datetime import datetime, timedelta

    later = run_scan(env, since=datetime.now() + timedelta(hours=1))
    assert later.clips_in_scope == 0 and later.exit_code == 0
    s = run_scan(env, since=parse_since("1h"), paths=(str(env.videos),))
    assert s.clips_in_scope == 7 and s.embedding_scanned == 4
    assert flag_keys(env.settings) == EXPECTED


def test_nudenet_missing_is_skipped_with_a_message(env, monkeypatch, caplog):
    import pipelines.moderate as pm

    monkeypatch.setattr(pm, "nudenet_unavailable", lambda: "the 'nudenet' package is not installed; install "
                                                           "the detector with pip install 'vidx[nudenet]'")
    env.policy.write_text(POLICY + '\n[nudenet]\ncategory = "drugs"\nthreshold = 0.6\n'
                                   'classes = ["FEMALE_BREAST_EXPOSED"]\n')
    s = scan(env.settings, ScanOptions(policy_path=str(env.policy)), text_encoder=fake_embed)
    assert s.detectors == ["embedding"] and "vidx[nudenet]" in s.skipped["nudenet"]
    assert s.new_flags == 3
    assert any("NudeNet detector skipped" in r.getMessage() for r in caplog.records)
    # Asked for explicitly, it is an error (exit 2), before anything is recorded.
    with pytest.raises(ModerationError, match="--nudenet: the 'nudenet' package is not installed"):
        scan(env.settings, ScanOptions(policy_path=str(env.policy), nudenet=True), text_encoder=fake_embed)


# ============================================================================ CLI, locks, reports


def test_cli_exit_codes_and_reports(env, capsys):
    db = env.settings.index_dir
    seed_text_cache(Path(db), POLICY)
    out = env.tmp / "out"
    rc = cli("--db", db, "--policy", str(env.policy), "--no-nudenet", "--report", str(out / "r.json"),
             "--report", str(out / "r.csv"), "--report", str(out / "r.html"))
    text = capsys.readouterr().out
    assert rc == 1, text
    assert "3 new flag(s)" in text and "NEW" in text
    report = json.loads((out / "r.json").read_text())
    assert len(report["flags"]) == 3 and report["run_id"]
    rows = list(csv.DictReader((out / "r.csv").open()))
    assert {r["category"] for r in rows} == {"weapons", "drugs"}
    assert all(r["path"].startswith(str(env.videos)) and r["start"] for r in rows)
    page = (out / "r.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 3 and "a.mp4" in page and "00:00:06.000" in page

    assert cli("--db", db, "--policy", str(env.policy), "--no-nudenet") == 0
    assert "nothing new" in capsys.readouterr().out

    assert cli("--db", db, "--policy", str(env.policy), "--no-nudenet", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == 0 and data["new_flags"] == 0 and data["open_flags"] == 3

    assert cli("review", "--db", db, "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [f["severity"] for f in listed["flags"]][0] == "high"  # most severe first
    assert cli("review", "--db", db, "--clear", "999") == 2
    assert "no flag with id #999" in capsys.readouterr().err


def test_cli_errors_exit_2_with_one_line(env, capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[categories.a]\nthreshold = 2\npositives = ["p"]\nnegatives = ["n"]\n')
    assert cli("--db", env.settings.index_dir, "--policy", str(bad)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vidx: error: {bad}:2: categories.a.threshold") and err.count("\n") == 1
    assert cli("--db", str(tmp_path / "nowhere")) == 2
    assert "no index at" in capsys.readouterr().err
    assert cli("--db", env.settings.index_dir, "--report", "x.pdf") == 2
    assert "unknown format" in capsys.readouterr().err
    assert cli("--db", env.settings.index_dir, "--clear", "3") == 2
    assert "belongs to 'vidx moderate review'" in capsys.readouterr().err


def test_overlapping_scans_are_refused(env, capsys):
    with ScanLock(env.settings.index_dir):
        with pytest.raises(ModerationError, match="another moderation scan .* is running"):
            run_scan(env)
        assert cli("--db", env.settings.index_dir, "--policy", str(env.policy)) == 2
    assert "another moderation scan" in capsys.readouterr().err
    assert run_scan(env).exit_code == 1  # the lock is free again


def test_scan_while_vidx_index_writes_fails_with_exit_2(env, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom indexer.store import IndexStore\n"
                               "s = IndexStore(sys.argv[1]).open()\nprint('ready', flush=True)\ntime.sleep(60)",
         env.settings.index_dir], cwd=str(REPO), stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        assert cli("--db", env.settings.index_dir, "--policy", str(env.policy)) == 2
        err = capsys.readouterr().err
        assert "in use by the process writing it" in err and f"pid {holder.pid}" in err, err
        assert "'vidx index'" in err and err.count("\n") == 1
        assert time.monotonic() - t0 < 10
        assert cli("review", "--db", env.settings.index_dir) == 2
    finally:
        holder.kill()
        holder.wait()
    assert run_scan(env).exit_code == 1


def test_scores_stay_exact_when_a_category_underflows_the_shared_shift():
    # logit_scale 1000: a clip equal to "a handgun" puts the drugs prompts 1000 logits below
    # the row's maximum (exp underflows); drugs must still get its own softmax (1 of 4 prompts).
    policy = parse_policy("logit_scale = 1000\n" + POLICY)
    bank = build_prompt_bank(policy, fake_embed, 100.0)
    s = bank.score(fake_embed(["a handgun", "lines of white powder"]))
    assert s[0, 0] == pytest.approx(1.0) and s[0, 1] == pytest.approx(0.25, abs=1e-6)
    assert s[1, 1] == pytest.approx(1.0) and s[1, 0] == pytest.approx(2 / 5, abs=1e-6)


def test_a_scope_path_the_index_cannot_hold_is_one_clear_error(env):
    with pytest.raises(ModerationError, match=r"caf.\.mp4 cannot be in the index: its name holds a private-use"):
        scan(env.settings, ScanOptions(policy_path=str(env.policy), paths=("/v/caf\U000F00E9.mp4",)),
             text_encoder=fake_embed)


def test_nudenet_stream_says_it_is_alive_before_anything_else(tmp_path):
    """The scan's driver bounds a task by its silence: the first item comes before any file I/O,
    and the outcome comes last (here: the file is gone, recorded as the reason)."""
    from indexer.watch import DecodeHeartbeat
    from pipelines.moderate import NudeNetJob, NudeNetOutcome, nudenet_video, nudenet_video_stream

    job = NudeNetJob(video_id=1, path=str(tmp_path / "gone.mp4"), size_bytes=1, mtime_ns=1, clip_ids=(7,),
                     spans=(ClipSpan(0, 0.0, 2.0),), k=3, classes=("FACE_FEMALE",), timeout_s=120.0,
                     heartbeat_s=10.0)
    items = list(nudenet_video_stream(job))
    assert isinstance(items[0], DecodeHeartbeat) and len(items) == 2
    assert isinstance(items[1], NudeNetOutcome) and "cannot read the file" in items[1].error
    quiet = dataclasses.replace(job, heartbeat_s=None)
    assert [type(x) for x in nudenet_video_stream(quiet)] == [NudeNetOutcome]
    assert nudenet_video(job).error == items[1].error
