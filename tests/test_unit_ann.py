"""The vector index by size (indexer.ann, vectors.search_index): recall, filters, switching.

Seeded clustered data (videos of consecutive clips around a video direction, videos
sharing topic directions), small thresholds so that the approximate index is built
from a few thousand vectors. FAISS ids are DuckDB clip ids with gaps, never row numbers.
"""

from __future__ import annotations

import math
from dataclasses import replace

import faiss
import numpy as np
import pyarrow as pa
import pytest

from indexer import ann
from indexer import vectors as vec
from indexer.store import IndexStore

DIM = 64
MODEL = "test|random:0"


def clustered(n: int, seed: int, clips_per_video: int = 40, n_topics: int = 30):
    """(vectors, video of each row): L2-normalised, clustered by video and topic."""
    rng = np.random.default_rng(seed)
    n_videos = max(1, n // clips_per_video)
    video_of = np.sort(rng.integers(0, n_videos, n))
    topics = rng.standard_normal((n_topics, DIM)).astype(np.float32)
    video_dir = rng.standard_normal((n_videos, DIM)).astype(np.float32)
    topic_of = rng.integers(0, n_topics, n_videos)
    x = (0.7 * topics[topic_of[video_of]] + 0.8 * video_dir[video_of]) / np.sqrt(DIM)
    x += 0.45 * rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), video_of


def queries_near(x: np.ndarray, m: int, seed: int, noise: float = 0.12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = x[rng.integers(0, len(x), m)] + noise * rng.standard_normal((m, DIM)).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ x.T
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, top, 1), ids[top]


def add_rows(store: IndexStore, ids: np.ndarray, x: np.ndarray) -> None:
    table = pa.table({"clip_id": ids.astype(np.int64), "model_id": [MODEL] * len(ids),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM)})
    store._insert_arrow("clip_vectors", table, "", "clip_id, model_id, vector::FLOAT[]")


def delete_rows(store: IndexStore, ids: np.ndarray) -> None:
    store.con.register("_del", pa.table({"clip_id": ids.astype(np.int64)}))
    store.con.execute("DELETE FROM clip_vectors WHERE clip_id IN (SELECT clip_id FROM _del)")
    store.con.unregister("_del")


def new_store(path, n: int, seed: int = 0, first_id: int = 1000, step: int = 3):
    store = IndexStore(str(path)).open()
    store.register_model(MODEL, "test", "random", DIM, 224, 100.0)
    x, video_of = clustered(n, seed)
    ids = first_id + step * np.arange(n, dtype=np.int64)  # clip ids with gaps, not row numbers
    add_rows(store, ids, x)
    return store, ids, x, video_of


LOW = ann.AnnSettings(threshold=5_000)


@pytest.fixture(scope="module")
def ivf_archive(tmp_path_factory):
    store, ids, x, video_of = new_store(tmp_path_factory.mktemp("ivf"), 20_000)
    index, report = ann.build(store, settings=LOW)
    store.save_faiss(index)
    yield store, index, report, ids, x, video_of
    store.close()


def test_ivf_reaches_the_recall_target_with_clip_ids(ivf_archive):
    store, index, report, ids, x, _ = ivf_archive
    assert report["type"] == "ivf" and vec.ivf_of(index) is not None
    assert report["target_reached"] and report["tuned_recall"] >= 0.95
    q = queries_near(x, 300, seed=11)
    _, truth = exact(x, ids, q, 10)
    _, found = vec.search_index(index, q, 10)
    assert found.shape == (300, 10)
    assert np.isin(found, ids).all()  # DuckDB clip ids, never row positions
    assert ann.recall_at(found, truth) >= 0.95
    assert set(vec.ids_of(index).tolist()) == set(ids.tolist())


def test_meta_records_type_and_search_parameters(ivf_archive):
    store, index, report, *_ = ivf_archive
    meta = vec.read_meta(store.index_dir)
    assert meta["type"] == "IndexIVFScalarQuantizer"
    a = meta["ann"]
    assert a["kind"] == "ivf" and a["factory"] == f"IVF{a['nlist']},SQ8"
    assert a["nprobe"] == report["nprobe"] >= 1 and a["trained_n"] == 20_000
    assert "filter_factor" in a and a["target_recall"] == 0.95
    loaded = store.load_faiss()
    assert vec.ann_info(loaded)["nprobe"] == a["nprobe"]
    assert vec.ivf_of(loaded).nprobe == a["nprobe"]
    # search_index applies the recorded nprobe: same answer as asking FAISS for it explicitly
    q = queries_near(store_vectors(store, 50), 50, seed=5)
    _, got = vec.search_index(loaded, q, 10)
    _, want = loaded.search(q, 10, params=faiss.SearchParametersIVF(nprobe=a["nprobe"]))
    assert np.array_equal(got, want)
    # ... and a changed sidecar value reaches the search (rows that one list cannot fill with
    # k results probe more lists, so only full rows are compared)
    vec.attach_ann_info(loaded, {**a, "nprobe": 1})
    _, one = vec.search_index(loaded, q, 10)
    _, want1 = loaded.search(q, 10, params=faiss.SearchParametersIVF(nprobe=1))
    full = (want1 >= 0).all(axis=1)
    assert full.sum() >= 25 and (one >= 0).all()
    assert np.array_equal(one[full], want1[full]) and not np.array_equal(one[full], got[full])
    vec.attach_ann_info(loaded, a)


def store_vectors(store: IndexStore, n: int) -> np.ndarray:
    return store.sample_vectors(n, seed=3)[1]


def one_percent(ids: np.ndarray, video_of: np.ndarray, seed: int) -> np.ndarray:
    videos = np.unique(video_of)
    keep = np.random.default_rng(seed).choice(videos, max(1, len(videos) // 100), replace=False)
    return ids[np.isin(video_of, keep)]


def test_filter_keeping_one_percent_returns_k_results(ivf_archive):
    store, index, _, ids, x, video_of = ivf_archive
    allowed = one_percent(ids, video_of, seed=2)
    assert 0 < len(allowed) <= 0.02 * len(ids)
    q = queries_near(x, 100, seed=12)
    rows = np.searchsorted(ids, allowed)
    truth_scores, truth = exact(x[rows], allowed, q, 10)

    # Approximate index, id selector inside FAISS (no vector source): k results, all allowed.
    _, found = vec.search_index(index, q, 10, allowed)
    assert found.shape == (100, 10) and (found >= 0).all() and np.isin(found, allowed).all()
    assert ann.recall_at(found, truth) >= 0.95

    # Exact subset path: the allowed vectors fetched from DuckDB -> exactly the exact top-k.
    scores, found = vec.search_index(index, q, 10, allowed, vector_source=store.fetch_vectors)
    assert found.shape == (100, 10)
    for f, t in zip(found, truth):
        assert set(f.tolist()) == set(t.tolist())
    np.testing.assert_allclose(scores, truth_scores, rtol=0, atol=1e-5)


def test_one_query_at_a_time_gives_what_a_batch_gives(ivf_archive):
    """A single query spreads its lists over the threads (parallel_mode 1), a batch does not
    (mode 0): the answers must be the same, filtered and unfiltered."""
    _, index, _, ids, x, video_of = ivf_archive
    q = queries_near(x, 40, seed=21)
    allowed = one_percent(ids, video_of, seed=4)
    for subset in (None, allowed):
        batch_scores, batch = vec.search_index(index, q, 10, subset)
        assert vec.ivf_of(index).parallel_mode == 0
        for row in range(len(q)):
            scores, found = vec.search_index(index, q[row], 10, subset)
            assert vec.ivf_of(index).parallel_mode == 1
            assert np.array_equal(found[0], batch[row])
            np.testing.assert_allclose(scores[0], batch_scores[row], rtol=0, atol=1e-5)


def test_flat_filter_is_exact_without_a_store(tmp_path):
    store, ids, x, video_of = new_store(tmp_path, 6_000, seed=4)
    index = store.build_faiss(settings=LOW)  # 6,000 >= 5,000: the ivf index of the same rows
    store.close()
    flat = vec.new_flat_index(DIM)
    flat.add_with_ids(x, ids)
    allowed = one_percent(ids, video_of, seed=3)
    q = queries_near(x, 50, seed=13)
    truth_scores, truth = exact(x[np.searchsorted(ids, allowed)], allowed, q, 10)
    scores, found = vec.search_index(flat, q, 10, allowed)
    assert found.shape == (50, 10)
    for f, t in zip(found, truth):
        assert set(f.tolist()) == set(t.tolist())
    np.testing.assert_allclose(scores, truth_scores, rtol=0, atol=1e-5)
    # fewer allowed than k: all of them, no padding beyond the allowed count
    _, few = vec.search_index(flat, q[:2], 10, allowed[:3])
    assert few.shape == (2, 3) and set(few[0].tolist()) == set(allowed[:3].tolist())
    # the same filter on the ivf index built from the same rows
    assert vec.ivf_of(index) is not None
    _, found_ivf = vec.search_index(index, q, 10, allowed, filter_factor=math.inf)
    assert ann.recall_at(found_ivf, truth) >= 0.95


def test_selector_handles_sparse_huge_ids():
    rng = np.random.default_rng(0)
    x, _ = clustered(2_000, seed=7)
    ids = (10 ** 12 + rng.choice(10 ** 9, 2_000, replace=False)).astype(np.int64)  # hash set, not a bitmap
    flat = vec.new_flat_index(DIM)
    flat.add_with_ids(x, ids)
    allowed = ids[::50]
    q = queries_near(x, 5, seed=1)
    _, found = vec.search_index(flat, q, 10, np.concatenate([allowed, [-1, 7]]))  # junk ids are ignored
    _, truth = exact(x[::50], allowed, q, 10)
    for f, t in zip(found, truth):
        assert set(f.tolist()) == set(t.tolist())


def test_absent_allowed_ids_give_no_results(ivf_archive):
    _, index, _, ids, x, _ = ivf_archive
    _, found = vec.search_index(index, x[:2], 10, np.array([ids.max() + 10, ids.max() + 20]))
    assert (found == -1).all()
    _, found = vec.search_index(index, x[:2], 10, np.array([], np.int64))
    assert found.shape == (2, 0)


def test_threshold_crossing_switches_type_and_back(tmp_path):
    s = ann.AnnSettings(threshold=4_000, hysteresis=0.2, retrain_growth=2.0)
    store, ids, x, _ = new_store(tmp_path, 3_000, seed=5)
    index = store.build_faiss(settings=s)
    assert ann.kind_of(index) == "flat"
    assert ann.maybe_rebuild(store, index, s) is index  # nothing due

    # grow past the threshold, as the indexing pipeline does (DuckDB first, then FAISS)
    x2, _ = clustered(1_500, seed=6)
    ids2 = ids.max() + 5 + 2 * np.arange(1_500)
    add_rows(store, ids2, x2)
    index.add_with_ids(x2, ids2)
    index = ann.maybe_rebuild(store, index, s)
    assert ann.kind_of(index) == "ivf" and index.ntotal == 4_500
    store.save_faiss(index)
    assert vec.read_meta(store.index_dir)["ann"]["kind"] == "ivf"
    assert vec.read_meta(store.index_dir)["ann"]["trained_n"] == 4_500

    # shrink into the hysteresis band (3,200 <= n < 4,000): stays ivf
    gone = ids[:1_000]
    delete_rows(store, gone)
    index.remove_ids(gone)
    assert ann.maybe_rebuild(store, index, s) is index

    # below threshold * (1 - hysteresis): back to flat
    gone = ids[1_000:1_400]
    delete_rows(store, gone)
    index.remove_ids(gone)
    index = ann.maybe_rebuild(store, index, s)
    assert ann.kind_of(index) == "flat" and index.ntotal == 3_100
    store.save_faiss(index)
    assert vec.read_meta(store.index_dir)["ann"]["kind"] == "flat"
    store.close()


def test_retrained_when_the_archive_doubles(tmp_path):
    s = ann.AnnSettings(threshold=3_000, retrain_growth=2.0)
    store, ids, x, _ = new_store(tmp_path, 3_000, seed=8)
    index = store.build_faiss(settings=s)
    assert ann.kind_of(index) == "ivf"
    store.save_faiss(index)
    reloaded = store.load_faiss(settings=s)  # trained_n comes back from the sidecar
    assert vec.ann_info(reloaded)["trained_n"] == 3_000
    x2, _ = clustered(2_000, seed=9)
    ids2 = ids.max() + 1 + np.arange(2_000)
    add_rows(store, ids2, x2)
    reloaded.add_with_ids(x2, ids2)
    assert ann.maybe_rebuild(store, reloaded, s) is reloaded  # 5,000 < 2 x 3,000
    x3, _ = clustered(1_000, seed=10)
    ids3 = ids2.max() + 1 + np.arange(1_000)
    add_rows(store, ids3, x3)
    reloaded.add_with_ids(x3, ids3)
    rebuilt = ann.maybe_rebuild(store, reloaded, s)
    assert rebuilt is not reloaded and ann.kind_of(rebuilt) == "ivf"
    assert vec.ann_info(rebuilt)["trained_n"] == 6_000
    store.close()


def test_stale_file_is_repaired_not_rebuilt(tmp_path):
    store, ids, x, _ = new_store(tmp_path, 6_000, seed=12)
    index = store.build_faiss(settings=LOW)
    store.save_faiss(index)
    built_at = vec.read_meta(store.index_dir)["ann"]["built_at"]
    # a crash between the DuckDB commit and the FAISS flush: DuckDB has more (and fewer) rows
    x2, _ = clustered(300, seed=13)
    ids2 = ids.max() + 1 + np.arange(300)
    add_rows(store, ids2, x2)
    delete_rows(store, ids[:100])
    again = store.load_faiss(settings=LOW)
    assert ann.kind_of(again) == "ivf" and again.ntotal == 6_200
    assert set(vec.ids_of(again).tolist()) == set(ids[100:].tolist()) | set(ids2.tolist())
    meta = vec.read_meta(store.index_dir)
    assert meta["ann"]["built_at"] == built_at and meta["checksum"] == store.id_checksum().__dict__
    store.close()


def test_far_stale_file_is_refilled_keeping_its_training(tmp_path):
    store, ids, x, _ = new_store(tmp_path, 6_000, seed=15)
    index = store.build_faiss(settings=LOW)
    store.save_faiss(index)
    nprobe = vec.ann_info(index)["nprobe"]
    x2, _ = clustered(11_000, seed=16)
    ids2 = ids.max() + 1 + np.arange(11_000)
    add_rows(store, ids2, x2)  # too many to add one by one: emptied and refilled from DuckDB
    again = store.load_faiss(settings=ann.AnnSettings(threshold=5_000, retrain_growth=4.0))
    assert ann.kind_of(again) == "ivf" and again.ntotal == 17_000
    assert vec.ann_info(again)["nprobe"] == nprobe and vec.ann_info(again)["trained_n"] == 6_000
    _, found = vec.search_index(again, np.concatenate([x[:20], x2[:20]]), 1)
    assert np.isin(found[:, 0], np.concatenate([ids, ids2])).all()
    assert (found[:20, 0] == ids[:20]).mean() >= 0.9
    store.close()


def test_rebuild_report_and_forced_type(tmp_path):
    store, *_ = new_store(tmp_path, 4_000, seed=14)
    report = ann.rebuild(store, "ivf", settings=LOW)
    assert report["type"] == "ivf" and report["n"] == 4_000 and report["bytes_per_vector"] > 0
    assert vec.read_meta(store.index_dir)["ann"]["kind"] == "ivf"
    report = ann.rebuild(store, None, settings=replace(LOW, threshold=10_000))
    assert report["type"] == "flat" and report["previous_type"] == "ivf"
    with pytest.raises(ValueError):
        ann.rebuild(store, "hnsw")
    store.close()


def test_choose_kind_hysteresis():
    s = ann.AnnSettings(threshold=100_000, hysteresis=0.2)
    assert ann.choose_kind(99_999, "flat", s) == "flat"
    assert ann.choose_kind(100_000, "flat", s) == "ivf"
    assert ann.choose_kind(85_000, "ivf", s) == "ivf"
    assert ann.choose_kind(79_999, "ivf", s) == "flat"
    assert ann.choose_kind(100_000, None, s) == "ivf"
    assert ann.auto_nlist(1_000_000) == 1024 and ann.auto_nlist(100_000) == 1024
    assert ann.auto_nlist(20_000) == 500 and ann.auto_nlist(100) == 2
