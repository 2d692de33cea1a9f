"""Which FAISS index the archive gets, by size: choosing, building, tuning, switching.

* Below ``ann_threshold`` vectors: ``flat`` = ``IndexIDMap2(IndexFlatIP)``, exact.
* From ``ann_threshold`` up: ``ivf`` = ``IVF{nlist},SQ8``, inner product, residual
  8-bit codes (about 530 bytes per vector: 512 code bytes, an 8-byte id, list
  overhead). It is trained on a sample of the vectors in DuckDB (40 per list) and
  filled from DuckDB. Two search parameters are tuned at build time, each the
  cheapest value whose recall@10 against exact search reaches
  ``ann_target_recall`` + 0.01 for every kind of held-out query:
    - ``nprobe``: lists visited by an unfiltered search;
    - ``filter_factor``: allowed vectors scored by a filtered search, relative to
      what an unfiltered search scores (see ``vectors.search_index``), tuned with
      filters that keep ~1% of the ids (runs of consecutive clip ids = videos).
  Held-out queries are stored vectors that were not in the training sample, moved
  to cosine 0.7 / 0.5 / 0.35 of where they were (so none is itself a stored vector);
  the three noise levels are the "kinds", so far queries count as much as near ones.
  Type, nlist, both parameters, training size and the measured recalls go to the
  sidecar under ``"ann"``; ``IndexStore.load_faiss`` attaches them to the loaded
  index and ``vectors.search_index`` applies them.

Switching is by count, with hysteresis: flat -> ivf at ``n >= ann_threshold``,
ivf -> flat only below ``ann_threshold * (1 - ann_hysteresis)``; an ivf index is
retrained (new nlist, centroids, parameters) when the archive has grown
``ann_retrain_growth`` times since training. ``maybe_rebuild`` is the cheap check
the indexing pipeline calls before each save; ``rebuild`` is ``vidx rebuild-vectors``.

nlist is a power of two near 4 * sqrt(n), at most 1024 (k-means of 40 * 1024
points into 1024 lists takes ~10-15 s on 2 cores). The coarse quantizer is exact
(flat), not HNSW: with at most 1024 centroids scoring all of them costs ~0.1 ms per
query and needs no efSearch tuning, and assigning vectors while building uses BLAS,
about 3x faster than through an HNSW32 quantizer on 2 cores (200k vectors: ~4.6 s vs
12.8 s). Set ``ann_nlist`` for archives far beyond a few million vectors.

Settings (read with ``getattr`` and these defaults until indexer.config has them):
``ann_threshold=100_000``, ``ann_hysteresis=0.2``, ``ann_target_recall=0.95``,
``ann_retrain_growth=2.0``, ``ann_nlist=0`` (0 = auto), ``ann_tune_queries=600``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import faiss
import numpy as np

from indexer import vectors as vec

log = logging.getLogger(__name__)

KIND_FLAT = "flat"
KIND_IVF = "ivf"
KINDS = (KIND_FLAT, KIND_IVF)

MIN_IVF_VECTORS = 2_000  # fewer than this cannot train a useful IVF; stays flat whatever the threshold
TUNE_K = 10  # recall@10 is what is tuned
TUNE_MARGIN = 0.01  # tune to target + margin: held-out queries are not the real ones; estimates are noisy
TRAIN_POINTS_PER_LIST = 40  # k-means sample = 40 * nlist (faiss warns below 39)
_NOISE_COSINES = (0.7, 0.5, 0.35)  # held-out queries: cosine to the stored vector they come from
FILTER_SUBSETS = 4  # filtered tuning: this many allowed sets, each ~1% of the ids ...
FILTER_FRACTION = 0.01
FILTER_BLOCK = 64  # ... made of runs of consecutive clip ids (clips of a video have consecutive ids)
_FILTER_LADDER = (0.25, 0.35, 0.5, 0.6, 0.7, 0.85, 1.0, 1.2, 1.4, 1.7, 2.0, 2.5, 3.0, 4.0, 6.0, math.inf)
_NPROBE_LADDER = (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128,
                  160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 2048, 3072,
                  4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152, 65536)


@dataclass(frozen=True)
class AnnSettings:
    threshold: int = 100_000  # vectors from which the index is approximate (ivf)
    hysteresis: float = 0.2  # ivf -> flat only below threshold * (1 - hysteresis)
    target_recall: float = 0.95  # recall@10 vs exact search that nprobe is tuned for
    retrain_growth: float = 2.0  # retrain ivf when the archive grew this much since training
    nlist: int = 0  # IVF lists; 0 = auto_nlist(n)
    tune_queries: int = 600  # held-out queries used to tune nprobe and the filtered search
    seed: int = 1234

    @classmethod
    def of(cls, settings=None) -> "AnnSettings":
        """From a Settings object (``ann_*`` fields, when present); None loads the user's settings."""
        if isinstance(settings, AnnSettings):
            return settings
        if settings is None:
            try:
                from indexer.config import load_settings

                settings = load_settings()
            except Exception as exc:  # a broken config must not stop a search; defaults then
                log.debug("settings not loaded (%s); ANN defaults used", exc)
                settings = None
        d = cls()
        return cls(threshold=int(getattr(settings, "ann_threshold", d.threshold)),
                   hysteresis=float(getattr(settings, "ann_hysteresis", d.hysteresis)),
                   target_recall=float(getattr(settings, "ann_target_recall", d.target_recall)),
                   retrain_growth=float(getattr(settings, "ann_retrain_growth", d.retrain_growth)),
                   nlist=int(getattr(settings, "ann_nlist", d.nlist)),
                   tune_queries=int(getattr(settings, "ann_tune_queries", d.tune_queries)))


# -- decisions ------------------------------------------------------------------------------
def kind_of(index) -> str | None:
    if index is None:
        return None
    return KIND_IVF if vec.ivf_of(index) is not None else KIND_FLAT


def kind_from_meta(meta: dict | None) -> str | None:
    """The kind a sidecar describes (None without one)."""
    if not meta:
        return None
    kind = (meta.get("ann") or {}).get("kind")
    if kind in KINDS:
        return kind
    return KIND_IVF if "IVF" in str(meta.get("type", "")) else KIND_FLAT


def choose_kind(n: int, current: str | None, settings: AnnSettings) -> str:
    """The kind for ``n`` vectors, given the current kind (hysteresis around the threshold)."""
    if n < MIN_IVF_VECTORS:
        return KIND_FLAT
    if current == KIND_IVF:
        return KIND_IVF if n >= settings.threshold * (1.0 - settings.hysteresis) else KIND_FLAT
    return KIND_IVF if n >= settings.threshold else KIND_FLAT


MAX_AUTO_NLIST = 1024  # k-means of 40 * 1024 points into 1024 lists: ~10-15 s on 2 cores


def auto_nlist(n: int) -> int:
    """A power of two near 4 * sqrt(n), at most MAX_AUTO_NLIST, with at least
    TRAIN_POINTS_PER_LIST vectors per list. Finer lists help clustered data (clips of a video
    sit together) and shrink the residuals the SQ8 codes quantize."""
    nlist = 2 ** round(math.log2(max(4.0 * math.sqrt(max(n, 1)), 1.0)))
    return int(max(1, min(nlist, MAX_AUTO_NLIST, n // TRAIN_POINTS_PER_LIST)))


def rebuild_reason(index, settings: AnnSettings | None = None) -> str | None:
    """Why ``index`` should be rebuilt now (None: it should not)."""
    if index is None:
        return None
    s = AnnSettings.of(settings)
    n = int(index.ntotal)
    kind = kind_of(index)
    want = choose_kind(n, kind, s)
    if want != kind:
        return (f"{n} vectors: {kind} -> {want} (threshold {s.threshold}, "
                f"back to flat below {int(s.threshold * (1 - s.hysteresis))})")
    if kind == KIND_IVF:
        trained = int(vec.ann_info(index).get("trained_n") or n)
        if n >= trained * s.retrain_growth:
            return f"{n} vectors, {n / max(trained, 1):.1f}x the {trained} the ivf index was trained on: retrain"
    return None


# -- building ---------------------------------------------------------------------------------
def build(store, kind: str | None = None, settings=None, previous_kind: str | None = None):
    """A fresh index of every vector in DuckDB: ``(index, report)``; ``(None, report)`` when empty.

    ``kind`` None chooses by count (``previous_kind`` is the kind before, for the hysteresis).
    """
    s = AnnSettings.of(settings)
    t0 = time.monotonic()
    dim = store.vector_dim()
    n = store.id_checksum().count
    if dim is None:
        return None, {"type": None, "n": 0}
    if kind is None:
        kind = choose_kind(n, previous_kind, s)
    if kind not in KINDS:
        raise ValueError(f"unknown index type {kind!r}; use one of {', '.join(KINDS)}")
    report: dict = {}
    if kind == KIND_IVF and n < MIN_IVF_VECTORS:
        report["note"] = f"{n} vectors are too few to train an ivf index (need {MIN_IVF_VECTORS}); flat instead"
        kind = KIND_FLAT
    if kind == KIND_FLAT:
        index = vec.new_flat_index(dim)
        for ids, mat in store.scan_vectors():
            vec.add_vectors(index, mat, ids)
        info = {"kind": KIND_FLAT, "metric": "inner_product", "trained_n": int(index.ntotal)}
    else:
        index, info = _build_ivf(store, dim, n, s)
    info["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    vec.attach_ann_info(index, info)
    report.update(info)
    report.update(type=kind, n=int(index.ntotal), build_s=round(time.monotonic() - t0, 3))
    log.info("built %s FAISS index of %d vectors in %.1f s", kind, index.ntotal, report["build_s"])
    return index, report


def _noisy_queries(source: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Held-out queries: each source vector moved to a set cosine from where it was.

    Returns (queries, level) with level the index into _NOISE_COSINES of each query."""
    n, d = source.shape
    level = np.resize(np.arange(len(_NOISE_COSINES)), n)
    cos = np.asarray(_NOISE_COSINES, np.float32)[level]
    noise = rng.standard_normal((n, d)).astype(np.float32)
    noise -= (noise * source).sum(1, keepdims=True) * source  # orthogonal to the source
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    q = cos[:, None] * source + np.sqrt(1.0 - cos ** 2)[:, None] * noise
    return np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), np.float32), level


class _TopK:
    """Running exact top-k (inner product) of some queries over streamed batches."""

    def __init__(self, queries: np.ndarray, k: int):
        self.q, self.k = queries, k
        self.scores = np.full((len(queries), 0), -np.inf, np.float32)
        self.ids = np.zeros((len(queries), 0), np.int64)

    def update(self, ids: np.ndarray, mat: np.ndarray) -> None:
        s = self.q @ mat.T
        if s.shape[1] > self.k:
            part = np.argpartition(-s, self.k - 1, axis=1)[:, :self.k]
            s, cand = np.take_along_axis(s, part, axis=1), ids[part]
        else:
            cand = np.broadcast_to(ids, s.shape)
        scores = np.concatenate([self.scores, s], axis=1)
        allids = np.concatenate([self.ids, cand], axis=1)
        if scores.shape[1] > self.k:
            part = np.argpartition(-scores, self.k - 1, axis=1)[:, :self.k]
            scores, allids = np.take_along_axis(scores, part, axis=1), np.take_along_axis(allids, part, axis=1)
        self.scores, self.ids = scores, allids


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` present in the same row of ``found``."""
    k = truth.shape[1]
    hits = sum(len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found[:, :k], truth))
    return hits / max(1, int((truth >= 0).sum()))


def _worst_group_recall(found: np.ndarray, truth: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """(lowest recall over the groups, overall recall)."""
    per = [recall_at(found[groups == g], truth[groups == g]) for g in np.unique(groups)]
    return min(per), recall_at(found, truth)


def _filter_subsets(all_ids: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Allowed sets for tuning the filtered search: ~1% of the ids each, as runs of
    consecutive ids (a video's clips have consecutive ids; filters select whole videos)."""
    ids = np.sort(all_ids)
    n_blocks = max(1, -(-len(ids) // FILTER_BLOCK))
    take = max(1, round(FILTER_FRACTION * n_blocks))
    subsets = []
    for _ in range(FILTER_SUBSETS):
        blocks = rng.choice(n_blocks, size=min(take, n_blocks), replace=False)
        rows = (blocks[:, None] * FILTER_BLOCK + np.arange(FILTER_BLOCK)[None, :]).ravel()
        subsets.append(ids[rows[rows < len(ids)]])
    return subsets


def _build_ivf(store, dim: int, n: int, s: AnnSettings):
    rng = np.random.default_rng(s.seed)
    nlist = s.nlist or auto_nlist(n)
    n_tune = int(min(s.tune_queries, max(60, n // 50)))
    n_train = int(min(max(n - n_tune, 1), TRAIN_POINTS_PER_LIST * nlist))
    nlist = int(max(1, min(nlist, n_train // TRAIN_POINTS_PER_LIST or 1)))
    t0 = time.monotonic()
    _, sample = store.sample_vectors(n_train + n_tune, seed=s.seed)
    sample = sample[rng.permutation(len(sample))]
    queries, level = _noisy_queries(sample[:n_tune], rng)
    train = sample[n_tune:]
    del sample
    subsets = _filter_subsets(store.clip_vector_ids(), rng)
    group = np.arange(n_tune) % len(subsets)  # which allowed set a query is tuned with
    t_sample = time.monotonic() - t0

    t0 = time.monotonic()
    index = faiss.index_factory(dim, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = 10
    ivf.cp.seed = s.seed
    ivf.cp.spherical = True  # unit-norm centroids: assignment by inner product = by cosine
    index.train(train)
    del train
    t_train = time.monotonic() - t0

    t0 = time.monotonic()
    truth = _TopK(queries, TUNE_K)
    truth_f = [_TopK(queries[group == g], TUNE_K) for g in range(len(subsets))]
    for ids, mat in store.scan_vectors():
        vec.add_vectors(index, mat, ids)
        truth.update(ids, mat)
        for sub, top in zip(subsets, truth_f):
            keep = np.isin(ids, sub)
            if keep.any():
                top.update(ids[keep], mat[keep])
    t_add = time.monotonic() - t0

    t0 = time.monotonic()
    nprobe, recall, curve, reached = tune_nprobe(index, queries, truth.ids, level, s.target_recall)
    t_tune = time.monotonic() - t0
    if not reached:
        log.warning("ivf index: recall@%d %.3f at nprobe=%d is below the target %.3f (SQ8 codes limit it)",
                    TUNE_K, recall, nprobe, s.target_recall)
    t0 = time.monotonic()
    truth_fids = np.zeros((n_tune, TUNE_K), np.int64)
    for g, top in enumerate(truth_f):
        ids_g = np.full((top.ids.shape[0], TUNE_K), -1, np.int64)
        ids_g[:, :top.ids.shape[1]] = top.ids
        truth_fids[group == g] = ids_g
    factor, f_recall, f_curve, f_reached = tune_filter_factor(index, queries, truth_fids, level, group, subsets,
                                                              nprobe, s.target_recall)
    t_tune_f = time.monotonic() - t0
    info = {
        "kind": KIND_IVF, "factory": f"IVF{nlist},SQ8", "metric": "inner_product", "quantizer": "flat",
        "nlist": nlist, "nprobe": int(nprobe), "filter_factor": None if math.isinf(factor) else factor,
        "trained_n": int(n), "train_sample": int(n_train), "tune_queries": int(n_tune),
        "target_recall": s.target_recall, "tuned_recall": round(recall, 4), "target_reached": bool(reached),
        "tuned_filtered_recall": round(f_recall, 4), "filtered_target_reached": bool(f_reached),
        "filter_tuning": f"{len(subsets)} allowed sets of ~{FILTER_FRACTION:.0%} of the ids",
        "recall_curve": [[int(p), round(r, 4)] for p, r in curve],
        "filter_curve": [[None if math.isinf(f) else f, round(r, 4)] for f, r in f_curve],
        "timings_s": {"sample": round(t_sample, 2), "train": round(t_train, 2), "add": round(t_add, 2),
                      "tune": round(t_tune, 2), "tune_filtered": round(t_tune_f, 2)},
    }
    ivf.nprobe = int(nprobe)
    return index, info


def tune_nprobe(index, queries: np.ndarray, truth: np.ndarray, groups: np.ndarray, target: float):
    """Smallest nprobe whose recall@k vs ``truth`` reaches target + margin in every group of
    queries (the noise levels: near and far queries alike).

    Returns (nprobe, recall, curve [(nprobe, worst-group recall)], reached). nprobe is the
    whole cost of a query (the coarse step is the same for every nprobe), so the smallest
    value that reaches the target is the cheapest setting.
    """
    ivf = vec.ivf_of(index)
    top = ivf.nlist if ivf.nlist < 512 else ivf.nlist // 4  # beyond a quarter of the lists: no gain, all cost
    ladder = [p for p in _NPROBE_LADDER if p < top] + [top]
    return _climb(ladder, lambda p: index.search(queries, truth.shape[1],
                                                 params=faiss.SearchParametersIVF(nprobe=p))[1],
                  truth, groups, target)


def tune_filter_factor(index, queries: np.ndarray, truth: np.ndarray, groups: np.ndarray, subset_of: np.ndarray,
                       subsets: list[np.ndarray], nprobe: int, target: float):
    """Smallest filter_factor (allowed vectors scored under a filter, relative to an unfiltered
    search) whose filtered recall@k reaches target + margin in every noise group."""
    def run(factor: float) -> np.ndarray:
        found = np.full(truth.shape, -1, np.int64)
        for g, allowed in enumerate(subsets):
            rows = subset_of == g
            if rows.any():
                _, ids = vec.search_index(index, queries[rows], truth.shape[1], allowed, nprobe=nprobe,
                                          filter_factor=factor)
                found[rows, :ids.shape[1]] = ids
        return found

    return _climb(list(_FILTER_LADDER), run, truth, groups, target)


def _climb(ladder: list, search, truth: np.ndarray, groups: np.ndarray, target: float):
    """Walk a ladder of ever costlier settings; the first whose worst-group recall reaches
    target + margin wins; else the cheapest within 0.002 of the best seen."""
    curve: list[tuple] = []
    goal = min(target + TUNE_MARGIN, 1.0)
    for setting in ladder:
        worst, overall = _worst_group_recall(search(setting), truth, groups)
        curve.append((setting, worst))
        if worst >= goal:
            return setting, worst, curve, True
    best = max(r for _, r in curve)
    for setting, r in curve:
        if r >= best - 0.002:
            return setting, r, curve, r >= target
    return curve[-1][0], curve[-1][1], curve, False  # pragma: no cover


# -- entry points -------------------------------------------------------------------------------
def maybe_rebuild(store, index, settings=None):
    """The index to keep using: ``index`` itself, or a rebuilt one when the archive crossed the
    threshold (either way) or grew ``ann_retrain_growth`` times since training.

    Cheap when nothing is due (a count and a comparison). Call it before ``store.save_faiss``
    with the in-memory index, which must match DuckDB (the rebuild reads DuckDB). Does not save.
    """
    if index is None:
        return None
    s = AnnSettings.of(settings)
    reason = rebuild_reason(index, s)
    if reason is None:
        return index
    log.info("rebuilding the FAISS index: %s", reason)
    new, report = build(store, choose_kind(int(index.ntotal), kind_of(index), s), s, kind_of(index))
    if new is None:
        return index
    if new.ntotal != index.ntotal:
        log.warning("rebuilt FAISS index holds %d vectors, the one it replaces %d (DuckDB is the truth)",
                    new.ntotal, index.ntotal)
    return new


def rebuild(store, force_type: str | None = None, settings=None) -> dict:
    """``vidx rebuild-vectors``: build the index afresh from DuckDB, save it, and say what was built.

    ``force_type`` "flat" or "ivf" overrides the choice by size (None or "auto": by size).
    The store must be writable (it holds the writer lock).
    """
    if store.read_only:
        raise ValueError("rebuild needs a writable index (the writer lock)")
    if force_type in (None, "", "auto"):
        force_type = None
    elif force_type not in KINDS:
        raise ValueError(f"unknown index type {force_type!r}; use auto, flat or ivf")
    before = vec.read_meta(store.index_dir)
    previous = kind_from_meta(before)
    index, report = build(store, force_type, settings, previous)
    report["previous_type"] = previous
    if index is None:
        return report
    t0 = time.monotonic()
    store.save_faiss(index)
    report["save_s"] = round(time.monotonic() - t0, 3)
    report["file_bytes"] = os.path.getsize(os.path.join(store.index_dir, vec.INDEX_FILE))
    report["bytes_per_vector"] = round(report["file_bytes"] / max(1, index.ntotal), 1)
    return report


def repair(store, index):
    """Bring a stale index (from the file) in line with DuckDB, keeping its kind, training and
    search parameters: remove/add the difference, or, when that is large, empty it and refill
    it from DuckDB (no training or tuning). Returns the index, or None if it still does not match.
    """
    want = store.clip_vector_ids()
    have = vec.ids_of(index)
    missing = np.setdiff1d(want, have)
    extra = np.setdiff1d(have, want)
    if len(missing) > max(10_000, len(want) // 4) or len(have) != len(np.unique(have)):
        vec.clear_vectors(index)
        for ids, mat in store.scan_vectors():
            vec.add_vectors(index, mat, ids)
        log.info("FAISS index refilled from DuckDB (%d vectors)", index.ntotal)
    else:
        if len(extra):
            vec.remove_vectors(index, extra)
        if len(missing):
            found, mat = store.fetch_vectors(missing)
            vec.add_vectors(index, mat, found)
        log.info("FAISS index repaired from DuckDB: %d added, %d removed", len(missing), len(extra))
    if vec.IdChecksum.of(vec.ids_of(index)) != store.id_checksum():
        return None
    return index


def meta_for_save(index, index_dir: str) -> dict:
    """The sidecar's "ann" entry for ``index`` (attached info; else what the index and the
    previous sidecar say)."""
    info = vec.ann_info(index)
    if "trained_n" not in info:
        old = (vec.read_meta(index_dir) or {}).get("ann") or {}
        if old.get("kind") == info.get("kind") and old.get("nlist") == info.get("nlist"):
            info = {**old, **info}
        else:
            info["trained_n"] = int(index.ntotal)
    return info


__all__ = ["AnnSettings", "KIND_FLAT", "KIND_IVF", "auto_nlist", "build", "choose_kind", "kind_of",
           "maybe_rebuild", "rebuild", "rebuild_reason", "repair", "recall_at", "tune_nprobe"]
