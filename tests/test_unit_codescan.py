"""The list-free filtered scan (indexer.codescan) against FAISS's own walk and exact search."""

from __future__ import annotations

import re
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer import codescan
from indexer import vectors as vec

ROOT = Path(__file__).resolve().parents[1]


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ivf(n=12_000, d=64, nlist=48, by_residual=True, seed=0):
    rng = np.random.default_rng(seed)
    centres = _unit(rng, 40, d)
    x = centres[rng.integers(0, 40, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.index_factory(d, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index).by_residual = by_residual
    index.train(x)
    ids = np.arange(n, dtype=np.int64) * 3 + 7  # sparse-ish ids, as after deletions
    vec.add_vectors(index, x, ids)
    return index, x, ids, rng


def _walk(index, queries, k, allowed, nprobe, factor):
    """The same search with the scan turned off: FAISS walks the chosen lists with a selector."""
    ivf = vec.ivf_of(index)
    lmap = vec._list_map(index, ivf)
    reader, lmap.reader = lmap.reader, None
    try:
        return vec.search_index(index, queries, k, allowed, nprobe=nprobe, filter_factor=factor)
    finally:
        lmap.reader = reader


def _sq8_vectors(index, ids):
    """What the SQ8 codes decode to (the exact answer the scan must reproduce)."""
    ivf = faiss.extract_index_ivf(index)
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    try:
        return index.reconstruct_batch(np.asarray(ids, np.int64))
    finally:
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)


@pytest.mark.parametrize("by_residual", [True, False])
@pytest.mark.parametrize("share", [0.005, 0.05, 0.5])
def test_scan_returns_what_the_walk_returns(by_residual, share):
    index, x, ids, rng = _ivf(by_residual=by_residual)
    assert vec._list_map(index, vec.ivf_of(index)).reader is not None  # the scan is the path taken
    allowed = np.sort(rng.choice(ids, int(share * len(ids)), replace=False))
    queries = _unit(rng, 25, x.shape[1])
    for nprobe, factor in ((2, 1.0), (4, 1.5), (1, float("inf"))):
        d_scan, i_scan = vec.search_index(index, queries, 20, allowed, nprobe=nprobe, filter_factor=factor)
        d_walk, i_walk = _walk(index, queries, 20, allowed, nprobe, factor)
        assert (i_scan >= 0).all() and np.isin(i_scan, allowed).all()
        np.testing.assert_allclose(d_scan, d_walk, rtol=0, atol=2e-5)
        for a, b, ds in zip(i_scan, i_walk, d_scan):
            # the same ids; two with scores equal to float precision may swap places
            assert set(a.tolist()) == set(b.tolist()) or np.ptp(ds[-2:]) < 2e-5


def test_scan_over_every_allowed_list_is_exact_over_the_codes():
    index, x, ids, rng = _ivf()
    allowed = np.sort(rng.choice(ids, 300, replace=False))
    queries = _unit(rng, 10, x.shape[1])
    dist, found = vec.search_index(index, queries, 15, allowed, filter_factor=float("inf"))
    decoded = _sq8_vectors(index, allowed)
    exact = queries @ decoded.T
    for q in range(len(queries)):
        top = np.argsort(-exact[q])[:15]
        np.testing.assert_allclose(dist[q], exact[q, top], atol=2e-5)
        assert set(found[q].tolist()) == set(allowed[top].tolist())


def test_unsorted_repeated_and_unknown_allowed_ids():
    index, x, ids, rng = _ivf()
    allowed = rng.choice(ids, 200, replace=False)
    messy = np.concatenate([allowed[::-1], allowed[:50], [0, 1, 10**9]])  # 0, 1: never stored
    queries = _unit(rng, 5, x.shape[1])
    d1, i1 = vec.search_index(index, queries, 30, messy, filter_factor=float("inf"))
    d2, i2 = vec.search_index(index, queries, 30, np.sort(allowed), filter_factor=float("inf"))
    np.testing.assert_array_equal(i1, i2)
    assert all(len(set(row.tolist())) == len(row) for row in i1)  # no id twice


def test_too_few_allowed_pads_with_minus_one():
    index, x, ids, rng = _ivf()
    dist, found = vec.search_index(index, _unit(rng, 2, x.shape[1]), 10, ids[:4])
    assert (found[:, :4] >= 0).all() and (found[:, 4:] == -1).all()


def test_the_map_follows_the_index_as_it_changes():
    # Lists reallocate as they grow: a scan through addresses taken before the change would
    # read freed memory. Every change goes through vectors.add_vectors / remove_vectors.
    index, x, ids, rng = _ivf(n=6_000)
    queries = _unit(rng, 8, x.shape[1])
    allowed = np.sort(rng.choice(ids, 400, replace=False))
    vec.search_index(index, queries, 10, allowed)  # builds the map
    more = _unit(rng, 30_000, x.shape[1])
    more_ids = np.arange(30_000, dtype=np.int64) + 10**6
    vec.add_vectors(index, more, more_ids)
    assert vec._LIST_MAPS.get(index) is None
    allowed = np.concatenate([allowed, more_ids[::50]])
    d_scan, i_scan = vec.search_index(index, queries, 10, allowed, filter_factor=float("inf"))
    exact = queries @ _sq8_vectors(index, allowed).T
    for q in range(len(queries)):
        np.testing.assert_allclose(d_scan[q], np.sort(exact[q])[::-1][:10], atol=2e-5)
    vec.remove_vectors(index, more_ids[::50][:100])
    d_scan, i_scan = vec.search_index(index, queries, 10, allowed, filter_factor=float("inf"))
    assert not np.isin(i_scan, more_ids[::50][:100]).any()


def test_readable_only_for_ivf_sq8_inner_product():
    d = 32
    x = _unit(np.random.default_rng(3), 2000, d)
    kinds = {"IVF16,SQ8": (faiss.METRIC_INNER_PRODUCT, True), "IVF16,SQ8 l2": (faiss.METRIC_L2, False),
             "IVF16,SQ4": (faiss.METRIC_INNER_PRODUCT, False), "IVF16,PQ8": (faiss.METRIC_INNER_PRODUCT, False),
             "IVF16,Flat": (faiss.METRIC_INNER_PRODUCT, False)}
    for name, (metric, expected) in kinds.items():
        index = faiss.index_factory(d, name.split()[0], metric)
        index.train(x)
        assert codescan.readable(faiss.downcast_index(index)) is expected, name
    assert not codescan.readable(faiss.downcast_index(vec.new_flat_index(d)))


def test_every_change_to_a_faiss_index_goes_through_the_helpers():
    pattern = re.compile(r"\.(add_with_ids|remove_ids)\(|faiss_index\.reset\(|index\.reset\(")
    offenders = []
    for folder in ("indexer", "search", "pipelines", "vidx"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "vectors.py":
                continue
            for no, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()}")
    assert not offenders, "use vectors.add_vectors / remove_vectors / clear_vectors:\n" + "\n".join(offenders)


def test_without_numba_the_walk_answers(monkeypatch, caplog):
    import builtins

    index, x, ids, rng = _ivf(n=4_000)
    allowed = np.sort(rng.choice(ids, 200, replace=False))
    queries = _unit(rng, 4, x.shape[1])
    expected = vec.search_index(index, queries, 10, allowed)
    real_import = builtins.__import__

    def no_numba(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "indexer" and fromlist and "codescan" in fromlist:
            raise ImportError("No module named 'numba'")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_numba)
    monkeypatch.setattr(vec, "_CODESCAN_MISSING", False)
    vec._LIST_MAPS.pop(index, None)
    got = vec.search_index(index, queries, 10, allowed)
    assert vec._list_map(index, vec.ivf_of(index)).reader is None
    assert "pip install 'numba" in caplog.text
    np.testing.assert_allclose(got[0], expected[0], atol=2e-5)
    assert all(set(a.tolist()) == set(b.tolist()) for a, b in zip(got[1], expected[1]))
