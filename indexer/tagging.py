"""Zero-shot tags: clip vectors scored against label vocabularies (TSN-style consensus).

A ``Vocabulary`` is a list of labels with prompt templates, a probability
threshold and a top-N. Built in: ``actions`` (the Kinetics-400 classes),
``objects`` (the 80 COCO categories and a few more) and ``scenes`` (settings, time
of day, weather), as package data in ``indexer/vocabularies/``. Custom ones come
from a text file (``Vocabulary.from_file``), in the same format as the built-in
files::

    # a comment
    # name: colours              (default: the file's stem)
    # threshold: 0.2             (probability; default depends on the number of labels)
    # top: 3                     (at most this many tags per clip; default 5)
    # template: a photo of {}.   (repeatable; default: a generic ensemble)
    red
    night = a scene at night     (label = phrase put into the templates instead of the label)

A ``LabelBank`` holds, per vocabulary, one text vector per label: the
L2-normalised mean of the label's prompt-template embeddings (prompt
ensembling). It is computed once per model and vocabulary content and cached per
user in ``$XDG_CACHE_HOME/vidx/labels/<hash>.npy`` (the hash covers the model id and
the vocabulary's phrases and templates, so indexes share it safely). Scores are the
model's own zero-shot probabilities: softmax over the vocabulary's labels of
``logit_scale * cosine``.
A label is kept for a clip when its probability reaches the vocabulary's
threshold (at most ``top`` per vocabulary).

Shot and video tags are a TSN segmental consensus over their clips: the
duration-weighted mean of the clips' probability distributions (recomputed from
the stored clip vectors, not from the thresholded clip tags), thresholded the
same way. A label is on a shot or video when it holds there on average, so a
video-level tag describes the video as a whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa

from indexer.config import user_cache_dir

log = logging.getLogger(__name__)

BUILTIN_FILES = {"actions": "kinetics400.txt", "objects": "objects.txt", "scenes": "scenes.txt"}
DEFAULT_VOCABULARIES = ("actions", "objects", "scenes")
DEFAULT_TEMPLATES = ("a photo of {}.", "a video of {}.", "a still from a video of {}.", "{}")
DEFAULT_TOP = 5
LEVELS = ("clip", "shot", "video")

_DIRECTIVE = re.compile(r"^#\s*(name|threshold|top|template)\s*:\s*(.*?)\s*$", re.IGNORECASE)
_PHRASE = re.compile(r"^(.*?\S)\s+=\s+(\S.*)$")


class VocabularyError(ValueError):
    """A vocabulary file that cannot be used; the message names the file and the fix."""


def default_threshold(n_labels: int) -> float:
    """Probability a label needs by default: twice chance, between 0.1 and 0.5."""
    return float(min(0.5, max(0.1, 2.0 / max(n_labels, 1))))


@dataclass(frozen=True)
class Vocabulary:
    """Labels scored together (one softmax); ``phrases`` go into the templates."""

    name: str
    labels: tuple[str, ...]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    threshold: float = 0.1
    top: int = DEFAULT_TOP
    phrases: tuple[str, ...] = ()  # per label; empty means the labels themselves
    source: str = ""

    def __post_init__(self):
        if not self.labels:
            raise VocabularyError(f"vocabulary '{self.name}' has no labels")
        if not self.phrases:
            object.__setattr__(self, "phrases", tuple(self.labels))
        if len(self.phrases) != len(self.labels):
            raise VocabularyError(f"vocabulary '{self.name}': {len(self.phrases)} phrases for "
                                  f"{len(self.labels)} labels")
        for t in self.templates:
            if "{}" not in t:
                raise VocabularyError(f"vocabulary '{self.name}': template '{t}' has no {{}} for the label")
        if not 0.0 <= self.threshold <= 1.0:
            raise VocabularyError(f"vocabulary '{self.name}': threshold {self.threshold} is not a "
                                  f"probability (0 to 1)")
        if self.top < 1:
            raise VocabularyError(f"vocabulary '{self.name}': top must be at least 1")

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, name: str, source: str = "") -> "Vocabulary":
        """Vocabulary from the text of a labels file (format in the module docstring)."""
        where = source or name
        labels: list[str] = []
        phrases: list[str] = []
        templates: list[str] = []
        threshold: float | None = None
        top = DEFAULT_TOP
        seen: set[str] = set()
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                m = _DIRECTIVE.match(line)
                if not m:
                    continue
                key, value = m.group(1).lower(), m.group(2)
                try:
                    if key == "name":
                        name = value or name
                    elif key == "threshold":
                        threshold = float(value)
                    elif key == "top":
                        top = int(value)
                    else:
                        templates.append(value)
                except ValueError:
                    raise VocabularyError(f"{where}:{lineno}: cannot read '{key}: {value}'; "
                                          f"threshold takes a probability, top a whole number") from None
                continue
            m = _PHRASE.match(line)
            label, phrase = (m.group(1), m.group(2)) if m else (line, line)
            key = label.casefold()
            if key in seen:
                log.warning("%s:%d: label '%s' appears twice; keeping the first", where, lineno, label)
                continue
            seen.add(key)
            labels.append(label)
            phrases.append(phrase)
        if not labels:
            raise VocabularyError(f"{where} has no labels; write one label per line ('#' starts a comment)")
        return cls(name=name, labels=tuple(labels), templates=tuple(templates) or DEFAULT_TEMPLATES,
                   threshold=default_threshold(len(labels)) if threshold is None else threshold,
                   top=top, phrases=tuple(phrases), source=source)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Vocabulary":
        """A custom vocabulary: one label per line; its name is the file's stem (or '# name:')."""
        path = Path(os.path.expanduser(str(path)))
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise VocabularyError(f"labels file {path} does not exist") from None
        except UnicodeDecodeError:
            raise VocabularyError(f"labels file {path} is not UTF-8 text") from None
        except OSError as exc:
            raise VocabularyError(f"cannot read labels file {path}: {exc.strerror}") from None
        return cls.parse(text, name=path.stem, source=str(path))

    @classmethod
    def builtin(cls, name: str) -> "Vocabulary":
        """One of the vocabularies shipped with vidx: actions, objects, scenes."""
        try:
            filename = BUILTIN_FILES[name]
        except KeyError:
            raise VocabularyError(f"no built-in vocabulary '{name}'; choose from "
                                  f"{', '.join(BUILTIN_FILES)} or give a labels file") from None
        text = resources.files("indexer").joinpath("vocabularies", filename).read_text(encoding="utf-8")
        vocab = cls.parse(text, name=name, source=f"builtin:{filename}")
        return vocab if vocab.name == name else cls(**{**vocab.__dict__, "name": name})

    # -- identity ------------------------------------------------------------------------------
    def content_hash(self) -> str:
        """Identity of what the text vectors depend on: the phrases and templates."""
        h = hashlib.blake2b(digest_size=10)
        for part in ("templates", *self.templates, "phrases", *self.phrases):
            h.update(part.encode("utf-8"))
            h.update(b"\0")
        return h.hexdigest()

    def prompts(self) -> list[str]:
        """Every (phrase, template) prompt, phrase-major: len(labels) * len(templates)."""
        return [t.format(p) for p in self.phrases for t in self.templates]


def builtin_vocabularies(names: Iterable[str] = DEFAULT_VOCABULARIES) -> list[Vocabulary]:
    return [Vocabulary.builtin(n) for n in names]


def load_vocabularies(builtins: Iterable[str] = DEFAULT_VOCABULARIES,
                      label_files: Iterable[str] = ()) -> list[Vocabulary]:
    """Built-in vocabularies plus custom files; a custom one replaces a built-in of the same name."""
    custom = [Vocabulary.from_file(f) for f in label_files]
    names = {v.name for v in custom}
    if len(names) != len(custom):
        raise VocabularyError("two labels files give the same vocabulary name; rename one "
                              "(the name is the file's stem, or '# name:' inside it)")
    return [v for v in builtin_vocabularies(builtins) if v.name not in names] + custom


def label_cache_dir() -> str:
    """Label text vectors are per model and vocabulary, not per index: share them per user."""
    return user_cache_dir("labels")


# -- the label bank ------------------------------------------------------------------------------

def _cache_key(model_id: str, vocab: Vocabulary) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(model_id.encode("utf-8"))
    h.update(b"\0")
    h.update(vocab.content_hash().encode())
    return h.hexdigest()


def _normalise_rows(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float32)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.maximum(norms, 1e-12)


def _read_cached(cache_dir: str | None, key: str, n: int) -> np.ndarray | None:
    if not cache_dir:
        return None
    path = os.path.join(cache_dir, key + ".npy")
    try:
        m = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable label cache %s: %s", path, exc)
        return None
    if m.ndim != 2 or m.shape[0] != n:
        return None
    return m.astype(np.float32, copy=False)


def _write_cached(cache_dir: str | None, key: str, m: np.ndarray) -> None:
    if not cache_dir:
        return
    try:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = os.path.join(cache_dir, f".{key}.{os.getpid()}.tmp.npy")
        np.save(tmp, m)
        os.replace(tmp, os.path.join(cache_dir, key + ".npy"))  # atomic: concurrent actors are fine
    except OSError as exc:
        log.warning("cannot cache label vectors in %s: %s", cache_dir, exc)


Tag = tuple[str, str, float]  # (vocabulary, label, probability)


@dataclass
class LabelBank:
    """Text vectors of every label of some vocabularies, for one model. Picklable (plain arrays)."""

    model_id: str
    logit_scale: float
    vocabularies: tuple[Vocabulary, ...]
    matrix: np.ndarray  # (total labels, dim) float32, rows L2-normalised, vocabularies in order
    offsets: tuple[int, ...] = field(default=())  # start row of each vocabulary, plus the end

    def __post_init__(self):
        if not self.offsets:
            ends = np.cumsum([0] + [len(v.labels) for v in self.vocabularies])
            self.offsets = tuple(int(x) for x in ends)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.vocabularies]

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def build(cls, model, vocabularies: Sequence[Vocabulary], cache_dir: str | None = None,
              batch_size: int = 256) -> "LabelBank":
        """Encode (or load from ``cache_dir``) every label's prompt ensemble with ``model``.

        ``model`` is an ``indexer.model.LoadedModel`` (anything with ``encode_text``,
        ``logit_scale`` and ``spec.model_id``).
        """
        model_id = model.spec.model_id
        parts = []
        for vocab in vocabularies:
            key = _cache_key(model_id, vocab)
            m = _read_cached(cache_dir, key, len(vocab.labels))
            if m is None:
                m = _encode_vocabulary(model, vocab, batch_size)
                _write_cached(cache_dir, key, m)
            parts.append(m)
        return cls._from_parts(model_id, float(model.logit_scale), vocabularies, parts)

    @classmethod
    def load(cls, cache_dir: str, model_id: str, vocabularies: Sequence[Vocabulary],
             logit_scale: float) -> "LabelBank | None":
        """The bank from the on-disk cache alone (no model); None if a vocabulary is not cached."""
        parts = []
        for vocab in vocabularies:
            m = _read_cached(cache_dir, _cache_key(model_id, vocab), len(vocab.labels))
            if m is None:
                return None
            parts.append(m)
        return cls._from_parts(model_id, logit_scale, vocabularies, parts)

    @classmethod
    def _from_parts(cls, model_id, logit_scale, vocabularies, parts) -> "LabelBank":
        vocabularies = tuple(vocabularies)
        names = [v.name for v in vocabularies]
        if len(set(names)) != len(names):
            raise VocabularyError(f"vocabulary names must be distinct: {', '.join(names)}")
        dims = {p.shape[1] for p in parts}
        if len(dims) > 1:
            raise ValueError(f"label vectors of different sizes {sorted(dims)}")
        matrix = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        return cls(model_id=model_id, logit_scale=float(logit_scale), vocabularies=vocabularies,
                   matrix=np.ascontiguousarray(matrix, dtype=np.float32))

    def subset(self, names: Iterable[str]) -> "LabelBank":
        keep = set(names)
        idx = [i for i, v in enumerate(self.vocabularies) if v.name in keep]
        parts = [self.matrix[self.offsets[i]:self.offsets[i + 1]] for i in idx]
        return self._from_parts(self.model_id, self.logit_scale, [self.vocabularies[i] for i in idx], parts)

    # -- scoring ---------------------------------------------------------------------------------
    def probabilities(self, vectors: np.ndarray) -> list[np.ndarray]:
        """Per vocabulary, an (N, labels) matrix of zero-shot probabilities (rows sum to 1)."""
        v = np.atleast_2d(np.asarray(vectors, np.float32))
        if v.shape[0] == 0:
            return [np.zeros((0, len(voc.labels)), np.float32) for voc in self.vocabularies]
        if v.shape[1] != self.dim:
            raise ValueError(f"vectors have {v.shape[1]} dimensions, the label bank {self.dim} "
                             f"(a different model?)")
        logits = self.logit_scale * (_normalise_rows(v) @ self.matrix.T)  # one matrix multiply
        out = []
        for i in range(len(self.vocabularies)):
            seg = logits[:, self.offsets[i]:self.offsets[i + 1]]
            seg = np.exp(seg - seg.max(axis=1, keepdims=True))
            out.append((seg / seg.sum(axis=1, keepdims=True)).astype(np.float32))
        return out

    def select(self, probs: list[np.ndarray]) -> list[list[Tag]]:
        """Per row: the labels at or above each vocabulary's threshold, at most ``top`` each,
        as (vocabulary, label, probability), best first within a vocabulary."""
        n = probs[0].shape[0] if probs else 0
        rows: list[list[Tag]] = [[] for _ in range(n)]
        for vocab, p in zip(self.vocabularies, probs):
            k = min(vocab.top, p.shape[1])
            if k < p.shape[1]:
                top = np.argpartition(-p, k - 1, axis=1)[:, :k]
            else:
                top = np.broadcast_to(np.arange(p.shape[1]), p.shape).copy()
            top_p = np.take_along_axis(p, top, axis=1)
            order = np.argsort(-top_p, axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            top_p = np.take_along_axis(top_p, order, axis=1)
            keep_r, keep_c = np.nonzero(top_p >= vocab.threshold)
            for r, c in zip(keep_r.tolist(), keep_c.tolist()):
                rows[r].append((vocab.name, vocab.labels[int(top[r, c])], float(top_p[r, c])))
        return rows

    def tag(self, vectors: np.ndarray) -> list[list[Tag]]:
        """Tags of each row of ``vectors`` (clip consensus vectors): [(vocabulary, label, p)]."""
        return self.select(self.probabilities(vectors))


def _encode_vocabulary(model, vocab: Vocabulary, batch_size: int) -> np.ndarray:
    prompts = vocab.prompts()
    # Batches of prompts of similar length: the text tower runs only as far as a batch's
    # longest prompt (indexer.model.trim_tokens), so sorting by length saves work.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    chunks = [np.asarray(model.encode_text([prompts[j] for j in order[i:i + batch_size]]), np.float32)
              for i in range(0, len(order), batch_size)]
    emb = np.empty((len(prompts), chunks[0].shape[1]), np.float32)  # a vocabulary has >= 1 label
    emb[order] = np.concatenate(chunks)
    emb = _normalise_rows(emb)
    emb = emb.reshape(len(vocab.labels), len(vocab.templates), -1).mean(axis=1)
    return _normalise_rows(emb)


# -- storage (DuckDB) ---------------------------------------------------------------------------

def tag_rows(ids: Sequence[int] | np.ndarray, tags: Sequence[Sequence[Tag]]) -> pa.Table:
    """Arrow rows (id, vocabulary, label, score) for clip_tags/shot_tags/video_tags."""
    ids = np.asarray(ids, np.int64)
    if len(ids) != len(tags):
        raise ValueError(f"{len(ids)} ids for {len(tags)} tag lists")
    counts = [len(t) for t in tags]
    flat = [t for ts in tags for t in ts]
    return pa.table({
        "id": pa.array(np.repeat(ids, counts), pa.int64()),
        "vocabulary": pa.array([t[0] for t in flat], pa.string()),
        "label": pa.array([t[1] for t in flat], pa.string()),
        "score": pa.array([float(t[2]) for t in flat], pa.float64()),
    })


def _insert(con, table: str, rows: pa.Table) -> int:
    if rows.num_rows == 0:
        return 0
    con.register("_vidx_tag_rows", rows)
    try:
        con.execute(f"INSERT INTO {table} SELECT id, vocabulary, label, score FROM _vidx_tag_rows")
    finally:
        con.unregister("_vidx_tag_rows")
    return rows.num_rows


def insert_clip_tags(con, clip_ids: Sequence[int] | np.ndarray, tags: Sequence[Sequence[Tag]]) -> int:
    """Store ``bank.tag`` output for ``clip_ids`` in clip_tags; returns the number of rows."""
    return _insert(con, "clip_tags", tag_rows(clip_ids, tags))


def _register_ids(con, name: str, ids: Iterable[int]) -> None:
    con.register(name, pa.table({"id": pa.array(np.asarray(list(ids), np.int64), pa.int64())}))


def _clip_matrix(con, video_ids: Sequence[int], model_id: str | None):
    """Clips of ``video_ids`` with vectors: (clip ids, video ids, start, end, vectors)."""
    _register_ids(con, "_vidx_tag_videos", video_ids)
    try:
        where = " AND v.model_id = $model" if model_id else ""
        rel = con.sql(
            "SELECT c.clip_id, c.video_id, c.start_s, c.end_s, v.vector FROM clips c "
            "JOIN clip_vectors v USING (clip_id) "
            f"WHERE c.video_id IN (SELECT id FROM _vidx_tag_videos){where} ORDER BY c.clip_id",
            params={"model": model_id} if model_id else None)
        table = rel.to_arrow_table()
    finally:
        con.unregister("_vidx_tag_videos")
    n = table.num_rows
    cols = [table.column(i).combine_chunks() for i in range(5)]
    clip_ids = np.asarray(cols[0].to_numpy(zero_copy_only=False), np.int64)
    vids = np.asarray(cols[1].to_numpy(zero_copy_only=False), np.int64)
    start = np.asarray(cols[2].to_numpy(zero_copy_only=False), np.float64)
    end = np.asarray(cols[3].to_numpy(zero_copy_only=False), np.float64)
    if n == 0:
        return clip_ids, vids, start, end, np.zeros((0, 0), np.float32)
    flat = cols[4].flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return clip_ids, vids, start, end, flat.reshape(n, -1)


def _delete_tags(con, table: str, id_col: str, id_sql: str, vocabularies: Sequence[str]) -> None:
    con.register("_vidx_tag_vocabs", pa.table({"name": pa.array(list(vocabularies), pa.string())}))
    try:
        con.execute(f"DELETE FROM {table} WHERE {id_col} IN ({id_sql}) "
                    f"AND vocabulary IN (SELECT name FROM _vidx_tag_vocabs)")
    finally:
        con.unregister("_vidx_tag_vocabs")


def _group_mean(groups: np.ndarray, n_groups: int, weights: np.ndarray, probs: np.ndarray) -> np.ndarray:
    acc = np.zeros((n_groups, probs.shape[1]), np.float64)
    np.add.at(acc, groups, probs * weights[:, None])
    wsum = np.zeros(n_groups, np.float64)
    np.add.at(wsum, groups, weights)
    return (acc / np.maximum(wsum, 1e-12)[:, None]).astype(np.float32)


def _chunks(ids: Sequence[int], n: int):
    ids = [int(v) for v in ids]
    for i in range(0, len(ids), n):
        yield ids[i:i + n]


def tag_clips(con, bank: LabelBank, video_ids: Sequence[int], videos_per_batch: int = 200) -> int:
    """(Re)tag the stored clip vectors of ``video_ids`` with ``bank``'s vocabularies.

    Replaces clip_tags of those vocabularies for those clips; returns rows written. Used
    for a vocabulary added after indexing; during indexing the model actor tags instead.
    Vectors are read ``videos_per_batch`` videos at a time. Does not open a transaction:
    run it inside the caller's when atomicity matters.
    """
    return sum(_tag_clips(con, bank, chunk) for chunk in _chunks(video_ids, videos_per_batch))


def _tag_clips(con, bank: LabelBank, video_ids: list[int]) -> int:
    clip_ids, _, _, _, mat = _clip_matrix(con, video_ids, bank.model_id)
    _register_ids(con, "_vidx_tag_clip_ids", clip_ids)
    try:
        _delete_tags(con, "clip_tags", "clip_id", "SELECT id FROM _vidx_tag_clip_ids", bank.names)
    finally:
        con.unregister("_vidx_tag_clip_ids")
    if len(clip_ids) == 0:
        return 0
    return insert_clip_tags(con, clip_ids, bank.tag(mat))


def tag_shots_and_videos(con, bank: LabelBank, video_ids: Sequence[int],
                         videos_per_batch: int = 200) -> tuple[int, int]:
    """Fill shot_tags and video_tags of ``video_ids`` from their stored clip vectors.

    Consensus: the duration-weighted mean of the clips' probability distributions (a
    clip belongs to the shot containing its midpoint), thresholded and cut to top-N per
    vocabulary like clip tags. Replaces earlier tags of ``bank``'s vocabularies for these
    shots and videos. Returns (shot tag rows, video tag rows). Does not open a
    transaction: call it inside the writer's when atomicity matters.
    """
    n_shot = n_video = 0
    for chunk in _chunks(video_ids, videos_per_batch):
        a, b = _tag_shots_and_videos(con, bank, chunk)
        n_shot, n_video = n_shot + a, n_video + b
    return n_shot, n_video


def _tag_shots_and_videos(con, bank: LabelBank, video_ids: list[int]) -> tuple[int, int]:
    if not video_ids:
        return 0, 0
    _register_ids(con, "_vidx_tag_vids", video_ids)
    try:
        shots = con.execute(
            "SELECT shot_id, video_id, start_s, end_s FROM shots WHERE video_id IN "
            "(SELECT id FROM _vidx_tag_vids) ORDER BY video_id, start_s").fetchall()
        _delete_tags(con, "shot_tags", "shot_id",
                     "SELECT shot_id FROM shots WHERE video_id IN (SELECT id FROM _vidx_tag_vids)", bank.names)
        _delete_tags(con, "video_tags", "video_id", "SELECT id FROM _vidx_tag_vids", bank.names)
    finally:
        con.unregister("_vidx_tag_vids")
    clip_ids, vids, start, end, mat = _clip_matrix(con, video_ids, bank.model_id)
    if len(clip_ids) == 0:
        return 0, 0
    probs = bank.probabilities(mat)
    weights = np.maximum(end - start, 1e-6)

    # videos
    uniq_videos, video_group = np.unique(vids, return_inverse=True)
    video_probs = [_group_mean(video_group, len(uniq_videos), weights, p) for p in probs]
    n_video = _insert(con, "video_tags", tag_rows(uniq_videos, bank.select(video_probs)))

    # shots: clip -> shot by midpoint, per video (shots sorted by start within a video)
    n_shot = 0
    if shots:
        shot_ids = np.array([s[0] for s in shots], np.int64)
        shot_vid = np.array([s[1] for s in shots], np.int64)
        shot_start = np.array([s[2] for s in shots], np.float64)
        shot_end = np.array([s[3] for s in shots], np.float64)
        mid = (start + end) / 2
        clip_shot = np.full(len(clip_ids), -1, np.int64)
        for vid in np.unique(shot_vid):
            srows = np.nonzero(shot_vid == vid)[0]
            crows = np.nonzero(vids == vid)[0]
            pos = np.searchsorted(shot_start[srows], mid[crows], side="right") - 1
            ok = pos >= 0
            pos_ok = srows[np.clip(pos, 0, None)]
            ok &= mid[crows] < shot_end[pos_ok]
            clip_shot[crows[ok]] = pos_ok[ok]
        has = clip_shot >= 0
        if has.any():
            used, group = np.unique(clip_shot[has], return_inverse=True)
            shot_probs = [_group_mean(group, len(used), weights[has], p[has]) for p in probs]
            n_shot = _insert(con, "shot_tags", tag_rows(shot_ids[used], bank.select(shot_probs)))
    return n_shot, n_video


def delete_tags_of_videos(con, video_ids: Sequence[int]) -> None:
    """Remove clip, shot and video tags of ``video_ids`` (before their clips/shots go)."""
    _register_ids(con, "_vidx_tag_del", video_ids)
    try:
        con.execute("DELETE FROM clip_tags WHERE clip_id IN (SELECT clip_id FROM clips WHERE video_id IN "
                    "(SELECT id FROM _vidx_tag_del))")
        con.execute("DELETE FROM shot_tags WHERE shot_id IN (SELECT shot_id FROM shots WHERE video_id IN "
                    "(SELECT id FROM _vidx_tag_del))")
        con.execute("DELETE FROM video_tags WHERE video_id IN (SELECT id FROM _vidx_tag_del)")
    finally:
        con.unregister("_vidx_tag_del")


# -- queries (search filters, hit tags) -------------------------------------------------------------

def parse_tag(con, tag: str) -> tuple[str | None, str]:
    """'beach' -> (None, 'beach'); 'scenes:beach' -> ('scenes', 'beach') when 'scenes' is a
    vocabulary in the index (labels may contain ':' themselves)."""
    vocab, sep, label = tag.partition(":")
    if sep and vocab.strip() and label.strip():
        known = {r[0] for r in con.execute(
            "SELECT DISTINCT vocabulary FROM clip_tags UNION SELECT DISTINCT vocabulary FROM shot_tags "
            "UNION SELECT DISTINCT vocabulary FROM video_tags").fetchall()}
        if vocab.strip() in known:
            return vocab.strip(), label.strip()
    return None, tag.strip()


def clip_ids_with_tags(con, tags: Sequence[str], levels: Sequence[str] = ("clip", "shot"),
                       min_score: float = 0.0) -> np.ndarray:
    """Sorted int64 ids of the clips that carry every tag in ``tags`` (AND).

    A tag is a label ('beach', matched case-insensitively in any vocabulary) or
    'vocabulary:label'. A clip carries it when the clip itself has it (level "clip"),
    the shot containing the clip's midpoint has it ("shot"), or its video has it
    ("video"); ``levels`` says which count.
    """
    bad = set(levels) - set(LEVELS)
    if bad:
        raise ValueError(f"unknown tag levels {sorted(bad)}; use {', '.join(LEVELS)}")
    result: np.ndarray | None = None
    for tag in tags:
        vocab, label = parse_tag(con, tag)
        cond = "lower(t.label) = lower($label)" + (" AND t.vocabulary = $vocab" if vocab else "")
        params = {"label": label, "min": float(min_score)}
        if vocab:
            params["vocab"] = vocab
        parts = []
        if "clip" in levels:
            parts.append(f"SELECT t.clip_id FROM clip_tags t WHERE {cond} AND t.score >= $min")
        if "shot" in levels:
            parts.append(
                "SELECT c.clip_id FROM shot_tags t JOIN shots s USING (shot_id) JOIN clips c "
                "ON c.video_id = s.video_id AND (c.start_s + c.end_s) / 2 >= s.start_s "
                f"AND (c.start_s + c.end_s) / 2 < s.end_s WHERE {cond} AND t.score >= $min")
        if "video" in levels:
            parts.append(f"SELECT c.clip_id FROM video_tags t JOIN clips c USING (video_id) "
                         f"WHERE {cond} AND t.score >= $min")
        if not parts:
            return np.zeros(0, np.int64)
        rows = con.execute(" UNION ".join(parts), params).fetchall()
        ids = np.unique(np.array([r[0] for r in rows], np.int64))
        result = ids if result is None else np.intersect1d(result, ids, assume_unique=True)
        if len(result) == 0:
            break
    return result if result is not None else np.zeros(0, np.int64)


def tags_of_clips(con, clip_ids: Sequence[int], top: int = 3) -> dict[int, tuple[str, ...]]:
    """Best labels of each clip (clip tags, else its shot's), for showing with search hits."""
    # A list parameter, not a registered Arrow table: registering imports pandas inside
    # DuckDB, a third of a second on every cold `vidx search`.
    rows = con.execute(
        "WITH hits AS (SELECT unnest($ids::BIGINT[]) AS id), "
        "own AS (SELECT clip_id, label, score FROM clip_tags WHERE clip_id IN (SELECT id FROM hits)), "
        "shot AS (SELECT c.clip_id, t.label, t.score FROM clips c JOIN shots s "
        "  ON c.video_id = s.video_id AND (c.start_s + c.end_s) / 2 >= s.start_s "
        "  AND (c.start_s + c.end_s) / 2 < s.end_s JOIN shot_tags t USING (shot_id) "
        "  WHERE c.clip_id IN (SELECT id FROM hits) "
        "  AND c.clip_id NOT IN (SELECT clip_id FROM own)), "
        "allt AS (SELECT * FROM own UNION ALL SELECT * FROM shot) "
        "SELECT clip_id, label, max(score) AS s FROM allt GROUP BY clip_id, label "
        "ORDER BY clip_id, s DESC, label", {"ids": [int(c) for c in clip_ids]}).fetchall()
    out: dict[int, list[str]] = {}
    for cid, label, _ in rows:
        lst = out.setdefault(int(cid), [])
        if len(lst) < top:
            lst.append(label)
    return {k: tuple(v) for k, v in out.items()}


# -- custom vocabularies remembered by the index ----------------------------------------------------

_META_PREFIX = "vocabulary:"


def vocabulary_text(vocab: Vocabulary) -> str:
    """The labels-file text that parses back to ``vocab``."""
    lines = [f"# name: {vocab.name}", f"# threshold: {vocab.threshold:g}", f"# top: {vocab.top}"]
    lines += [f"# template: {t}" for t in vocab.templates]
    lines += [lab if lab == ph else f"{lab} = {ph}" for lab, ph in zip(vocab.labels, vocab.phrases)]
    return "\n".join(lines) + "\n"


def remember_vocabulary(con, vocab: Vocabulary) -> None:
    """Record a custom vocabulary in the index's meta table, so later indexing runs apply it."""
    key = _META_PREFIX + vocab.name
    con.execute("DELETE FROM meta WHERE key = ?", [key])
    con.execute("INSERT INTO meta VALUES (?, ?)", [key, vocabulary_text(vocab)])


def stored_vocabularies(con) -> list[Vocabulary]:
    """Custom vocabularies recorded with ``remember_vocabulary`` (name order)."""
    rows = con.execute("SELECT key, value FROM meta WHERE starts_with(key, ?) ORDER BY key",
                       [_META_PREFIX]).fetchall()
    return [Vocabulary.parse(text, name=key[len(_META_PREFIX):], source=f"index:{key}") for key, text in rows]
