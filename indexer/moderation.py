"""Content moderation: policies, scoring of stored clip embeddings, flags, review, reports.

Library code (no Ray): ``pipelines.moderate`` drives a scan with it, ``vidx moderate``
is the command.

**Policy** (TOML, ``policies/default.toml`` ships): categories with positive and negative
text prompts, a threshold and a severity; optional ``common_negatives`` added to every
category, prompt ``templates`` (prompt ensembling), an optional ``logit_scale`` override
and an optional ``[nudenet]`` frame detector section. ``parse_policy`` validates it and
names the file, the line and the key of any problem.

**Score** of category c for a clip with stored (L2-normalised) vector v::

    score_c(v) = sum_{p in P_c} exp(s * <v, t_p>) / sum_{q in P_c + N_c} exp(s * <v, t_q>)

where t are the prompt embeddings (each prompt embedded through every template, averaged
and re-normalised), P_c the positives, N_c the category's negatives plus the common
negatives, and s the model's own logit scale (CLIP's learned temperature). It is the
probability that CLIP's zero-shot classifier over all of the category's descriptions puts
on the positive ones: 0..1, comparable across categories and models, and a benign clip
that matches nothing in particular sits near the prior |P_c| / (|P_c| + |N_c|), not at an
arbitrary cosine. A clip is flagged when ``score >= threshold``.

**Versions**: ``Policy.version`` is a hash of the normalised policy (whitespace, order,
duplicates, comments, labels and descriptions do not count). Each detector also has its
own version (the part of the policy it reads): a clip counts as scanned by a detector
when it was scanned under that detector's current version, so editing prompts rescans
the (cheap) embedding scores without re-decoding every video for NudeNet.

**Flags** (DuckDB ``moderation_flags``): one per (clip, category), with score, detector,
evidence, severity, policy version and review status (open / confirmed / cleared). A
reviewed flag is never re-opened or duplicated by later scans, whatever the policy
version; a byte-identical copy of a cleared clip is not flagged again either.
"""

from __future__ import annotations

import base64
import csv
import difflib
import fcntl
import hashlib
import html
import io
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.pathtext import display_path, from_stored, spellings, to_stored
from indexer.store import FileLock, IndexLocked
import pyarrow as pa

DEFAULT_POLICY = Path(__file__).with_name("policies") / "default.toml"
LOCK_FILE = "moderation.lock"
SEVERITIES = ("low", "medium", "high", "critical")
STATUSES = ("open", "confirmed", "cleared")
DETECTORS = ("embedding", "nudenet")
DEFAULT_TEMPLATES = ("{}", "a video of {}.", "a still from a video of {}.", "a photo of {}.")
# NudeNet 3.4's detector classes (nudenet/nudenet.py, in output order).
NUDENET_LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED",
    "BELLY_COVERED", "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE",
    "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
NUDENET_INPUT = 320  # the shipped 320n.onnx model's input size
NUDENET_MIN_SCORE = 0.2  # NudeNet's own floor for a candidate box
NUDENET_INSTALL_HINT = "pip install 'vidx[nudenet]'"
_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


class ModerationError(RuntimeError):
    """A moderation command cannot run; the message says what to do. The CLI exits 2."""


class PolicyError(ModerationError):
    """An invalid policy file; the message names the file, the line when known, and the key."""


# ============================================================================ policy


@dataclass(frozen=True)
class Category:
    key: str
    label: str
    severity: str
    threshold: float
    positives: tuple[str, ...]
    negatives: tuple[str, ...]  # the category's own negatives (common ones are added when scoring)


@dataclass(frozen=True)
class NudeNetSettings:
    enabled: bool
    category: str
    threshold: float
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    source: str
    templates: tuple[str, ...]
    common_negatives: tuple[str, ...]
    categories: tuple[Category, ...]
    logit_scale: float | None = None
    nudenet: NudeNetSettings | None = None

    def category(self, key: str) -> Category:
        return next(c for c in self.categories if c.key == key)

    def negatives_of(self, cat: Category) -> tuple[str, ...]:
        """The category's negatives plus the common negatives, each once, never a positive."""
        seen = set(cat.positives)
        out = []
        for text in (*cat.negatives, *self.common_negatives):
            if text not in seen:
                seen.add(text)
                out.append(text)
        return tuple(out)

    def normalised(self) -> dict:
        """What the version hashes: everything that decides which clips are flagged and how."""
        return {
            "embedding": self._embedding_part(),
            "nudenet": self._nudenet_part(),
        }

    def _embedding_part(self) -> dict:
        return {
            "templates": sorted(self.templates),
            "common_negatives": sorted(self.common_negatives),
            "logit_scale": self.logit_scale,
            "categories": {c.key: {"severity": c.severity, "threshold": c.threshold,
                                   "positives": sorted(c.positives), "negatives": sorted(c.negatives)}
                           for c in self.categories},
        }

    def _nudenet_part(self) -> dict | None:
        n = self.nudenet
        if n is None:
            return None
        return {"enabled": n.enabled, "category": n.category, "threshold": n.threshold,
                "classes": sorted(n.classes), "input": NUDENET_INPUT}

    @property
    def version(self) -> str:
        return _digest(self.normalised())

    def detector_version(self, detector: str) -> str:
        part = self._embedding_part() if detector == "embedding" else self._nudenet_part()
        return _digest({detector: part})

    def display(self) -> dict:
        """Labels and descriptions (not part of the version), for reports."""
        return {"name": self.name, "description": self.description, "source": self.source,
                "labels": {c.key: c.label for c in self.categories}}


def _digest(obj) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_policy(path: str | os.PathLike | None = None) -> Policy:
    """Read and validate a policy file (the shipped default when ``path`` is None)."""
    source = str(path) if path else str(DEFAULT_POLICY)
    try:
        with open(source, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise PolicyError(f"policy file {source} does not exist") from None
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {source}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise PolicyError(f"{source}:{line}: policy file is not UTF-8 text") from None
    return parse_policy(text, source)


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"line (\d+)", msg)
        raise PolicyError(f"{source}:{m.group(1)}: invalid TOML: {msg}" if m else
                          f"{source}: invalid TOML: {msg}") from None
    return _Validator(text, source).policy(data)


class _Validator:
    """Turns parsed TOML into a Policy; every error names the key and, when found, the line."""

    _TOP = ("name", "description", "templates", "common_negatives", "logit_scale", "categories", "nudenet")
    _CATEGORY = ("label", "severity", "threshold", "positives", "negatives")
    _NUDENET = ("enabled", "category", "threshold", "classes")

    def __init__(self, text: str, source: str):
        self.lines = text.splitlines()
        self.source = source

    # -- errors with line numbers ------------------------------------------------------
    def fail(self, path: Sequence[str], problem: str):
        key = ".".join(_quote_key(p) for p in path)
        line = self.line_of(path)
        where = f"{self.source}:{line}" if line else self.source
        raise PolicyError(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")

    def line_of(self, path: Sequence[str]) -> int | None:
        """Line of ``path`` (a key or a table) in a conventionally written TOML file."""
        path = list(path)
        if not path:
            return None
        table: list[str] = []
        best = None
        for n, raw in enumerate(self.lines, 1):
            line = raw.strip()
            header = re.match(r"^\[\[?\s*([^\[\]]+?)\s*\]\]?\s*(#.*)?$", line)
            if header:
                table = _split_dotted(header.group(1))
                if table == path:
                    return n
                continue
            m = re.match(r"^((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_.\- ]+?))\s*=", line)
            if not m:
                continue
            key = table + _split_dotted(m.group(1))
            if key == path:
                return n
            if best is None and len(key) >= len(path) and key[:len(path)] == path:
                best = n  # a dotted key inside the table we look for
        if best is None and len(path) > 1:
            return self.line_of(path[:-1])  # the key is missing: point at its table
        return best

    # -- checks ----------------------------------------------------------------------------
    def unknown_keys(self, table: dict, allowed: Sequence[str], path: list[str]) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(allowed)})"
                self.fail(path + [key], f"unknown key{hint}")

    def string(self, value, path, required=True, default=""):
        if value is None:
            if required:
                self.fail(path, "is missing")
            return default
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {_toml_type(value)}")
        return value.strip()

    def number(self, value, path, lo: float, hi: float, required=True):
        if value is None:
            if required:
                self.fail(path, f"is missing (a number between {lo:g} and {hi:g})")
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(path, f"must be a number between {lo:g} and {hi:g}, got {_toml_type(value)}")
        value = float(value)
        if not (lo <= value <= hi) or not math.isfinite(value):
            self.fail(path, f"must be between {lo:g} and {hi:g}, got {value:g}")
        return value

    def texts(self, value, path, required=True, allow_empty=False) -> tuple[str, ...]:
        if value is None:
            if required:
                self.fail(path, "is missing (a list of text prompts)")
            return ()
        if not isinstance(value, list):
            self.fail(path, f"must be a list of strings, got {_toml_type(value)}")
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(path, f"item {i + 1} must be a string, got {_toml_type(item)}")
            norm = " ".join(item.split())
            if not norm:
                self.fail(path, f"item {i + 1} is empty")
            if norm not in out:
                out.append(norm)
        if not out and not allow_empty:
            self.fail(path, "must not be empty")
        return tuple(out)

    def policy(self, data: dict) -> Policy:
        self.unknown_keys(data, self._TOP, [])
        name = self.string(data.get("name"), ["name"], required=False, default="") or Path(self.source).stem
        description = self.string(data.get("description"), ["description"], required=False)
        templates = self.texts(data.get("templates"), ["templates"], required=False) or DEFAULT_TEMPLATES
        for t in templates:
            try:
                ok = t.count("{}") == 1 and t.format("x") is not None
            except (IndexError, KeyError, ValueError):
                ok = False
            if not ok:
                self.fail(["templates"], f"template {t!r} must contain '{{}}' exactly once (where the "
                                         f"prompt goes) and no other braces")
        common = self.texts(data.get("common_negatives"), ["common_negatives"], required=False, allow_empty=True)
        logit_scale = self.number(data.get("logit_scale"), ["logit_scale"], 1e-3, 1000.0, required=False)

        cats_raw = data.get("categories")
        if cats_raw is None:
            self.fail([], "no [categories.NAME] table: a policy needs at least one category")
        if not isinstance(cats_raw, dict) or not cats_raw:
            self.fail(["categories"], "must hold at least one [categories.NAME] table")
        categories = []
        for key, raw in cats_raw.items():
            path = ["categories", key]
            if not _KEY_RE.match(key):
                self.fail(path, "category names may use letters, digits, '_' and '-' only")
            if not isinstance(raw, dict):
                self.fail(path, f"must be a table ([categories.{key}]), got {_toml_type(raw)}")
            self.unknown_keys(raw, self._CATEGORY, path)
            severity = self.string(raw.get("severity"), path + ["severity"], required=False, default="medium")
            if severity not in SEVERITIES:
                self.fail(path + ["severity"], f"must be one of {', '.join(SEVERITIES)}, got {severity!r}")
            threshold = self.number(raw.get("threshold"), path + ["threshold"], 0.0, 1.0)
            positives = self.texts(raw.get("positives"), path + ["positives"])
            negatives = self.texts(raw.get("negatives"), path + ["negatives"], required=False, allow_empty=True)
            overlap = set(positives) & set(negatives)
            if overlap:
                self.fail(path + ["negatives"], f"{sorted(overlap)[0]!r} is both a positive and a negative")
            if not [n for n in (*negatives, *common) if n not in positives]:
                self.fail(path + ["negatives"], "the category has no negative prompt (its own or "
                                                "common_negatives): every clip would score 1.0")
            label = self.string(raw.get("label"), path + ["label"], required=False) or key
            categories.append(Category(key, label, severity, threshold, positives, negatives))

        nudenet = None
        if "nudenet" in data:
            raw = data["nudenet"]
            path = ["nudenet"]
            if not isinstance(raw, dict):
                self.fail(path, f"must be a table ([nudenet]), got {_toml_type(raw)}")
            self.unknown_keys(raw, self._NUDENET, path)
            enabled = raw.get("enabled", True)
            if not isinstance(enabled, bool):
                self.fail(path + ["enabled"], f"must be true or false, got {_toml_type(enabled)}")
            category = self.string(raw.get("category"), path + ["category"])
            if category not in cats_raw:
                self.fail(path + ["category"], f"names no category of this policy ({category!r}; "
                                               f"categories: {', '.join(cats_raw)})")
            threshold = self.number(raw.get("threshold"), path + ["threshold"], 0.0, 1.0)
            classes = self.texts(raw.get("classes"), path + ["classes"])
            for c in classes:
                if c not in NUDENET_LABELS:
                    close = difflib.get_close_matches(c, NUDENET_LABELS, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(NUDENET_LABELS)}"
                    self.fail(path + ["classes"], f"{c!r} is not a NudeNet class{hint}")
            nudenet = NudeNetSettings(enabled, category, threshold, classes)
        return Policy(name=name, description=description, source=self.source, templates=templates,
                      common_negatives=common, categories=tuple(categories), logit_scale=logit_scale,
                      nudenet=nudenet)


def _split_dotted(text: str) -> list[str]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([^.\s"\']+)', text)
    return [a or b or c for a, b, c in parts]


def _quote_key(key: str) -> str:
    return key if _KEY_RE.match(key) else json.dumps(key)


def _toml_type(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


# ============================================================================ scoring


@dataclass
class PromptBank:
    """The embedded prompts of a policy, ready to score a matrix of clip vectors at once."""

    categories: tuple[Category, ...]
    matrix: np.ndarray  # (n_unique_prompts, dim) float32, L2-normalised
    columns: list[np.ndarray]  # per category: prompt rows, positives first
    n_pos: list[int]
    logit_scale: float
    thresholds: np.ndarray = field(init=False)

    def __post_init__(self):
        self.thresholds = np.array([c.threshold for c in self.categories], np.float32)
        m, c = len(self.matrix), len(self.categories)
        # Indicator matrices: which prompt counts in which category's numerator / denominator.
        self._pos = np.zeros((m, c), np.float32)
        self._all = np.zeros((m, c), np.float32)
        for j, (cols, p) in enumerate(zip(self.columns, self.n_pos)):
            self._pos[cols[:p], j] = 1.0
            self._all[cols, j] = 1.0
        self._scaled = (self.matrix * np.float32(self.logit_scale)).T.copy()  # (dim, m)

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.categories]

    def score(self, vectors: np.ndarray) -> np.ndarray:
        """(N, dim) clip vectors -> (N, n_categories) scores in [0, 1].

        Three matrix multiplies for the whole batch: logits = s * V P^T; the softmax of a
        category is invariant to a shift, so one shift per row (its largest logit) serves every
        category, e = exp(logits - max), and score = (e @ positives) / (e @ all prompts) with
        0/1 indicator matrices. Rows where a category's logits all sit so far below the row's
        maximum that exp underflows are recomputed with that category's own shift.
        """
        logits = vectors.astype(np.float32, copy=False) @ self._scaled
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        num = logits @ self._pos
        den = logits @ self._all
        tiny = den < 1e-30
        if tiny.any():
            num[tiny], den[tiny] = self._exact(vectors, tiny)
        np.divide(num, den, out=num)
        return num

    def _exact(self, vectors: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, cats = np.nonzero(mask)
        num = np.empty(len(rows), np.float32)
        den = np.ones(len(rows), np.float32)
        for j in np.unique(cats):
            sel = cats == j
            cols, p = self.columns[j], self.n_pos[j]
            block = (vectors[rows[sel]].astype(np.float32) @ self._scaled[:, cols]).astype(np.float64)
            block = np.exp(block - block.max(axis=1, keepdims=True))
            num[sel] = block[:, :p].sum(axis=1) / block.sum(axis=1)
        return num, den

    def hits(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, category index) of every score at or above its category's threshold."""
        return np.nonzero(scores >= self.thresholds[None, :])


def build_prompt_bank(policy: Policy, encode_text: Callable[[list[str]], np.ndarray],
                      logit_scale: float, batch: int = 256) -> PromptBank:
    """Embed every prompt of ``policy`` (ensembled over its templates) with ``encode_text``."""
    prompts: list[str] = []
    for cat in policy.categories:
        for text in (*cat.positives, *policy.negatives_of(cat)):
            if text not in prompts:
                prompts.append(text)
    row = {p: i for i, p in enumerate(prompts)}
    texts = [t.format(p) for p in prompts for t in policy.templates]
    parts = [np.asarray(encode_text(texts[i:i + batch]), np.float32) for i in range(0, len(texts), batch)]
    emb = np.concatenate(parts).reshape(len(prompts), len(policy.templates), -1).mean(axis=1)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    columns, n_pos = [], []
    for cat in policy.categories:
        columns.append(np.array([row[p] for p in (*cat.positives, *policy.negatives_of(cat))], np.int64))
        n_pos.append(len(cat.positives))
    return PromptBank(policy.categories, emb.astype(np.float32), columns, n_pos,
                      float(policy.logit_scale or logit_scale))


# ============================================================================ NudeNet


def nudenet_unavailable() -> str | None:
    """Why the NudeNet detector cannot run here (None when it can)."""
    import importlib.util

    for module in ("nudenet", "onnxruntime", "cv2"):
        if importlib.util.find_spec(module) is None:
            return (f"the '{module}' package is not installed; install the detector with "
                    f"{NUDENET_INSTALL_HINT}")
    path = nudenet_model_path()
    if not os.path.exists(path):
        return f"NudeNet's model file {path} is missing; reinstall it with {NUDENET_INSTALL_HINT}"
    return None


def nudenet_model_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("nudenet")
    folder = os.path.dirname(spec.origin) if spec and spec.origin else ""
    return os.path.join(folder, "320n.onnx")


class NudeNetScorer:
    """NudeNet 3.4's ONNX detector (the model inside the wheel) over batches of RGB frames.

    Preprocessing is NudeNet's own (pad to a square at the bottom/right, resize to 320,
    scale to 0..1, channel order as ``NudeDetector.detect`` feeds an image file), done for
    a whole batch; its per-box rule is kept too (a box's class is its best-scoring class,
    candidates below 0.2 dropped). ``class_max`` returns, per frame, the best score of
    each class: what ``NudeDetector.detect`` would report for that class before its
    non-maximum suppression (which only drops overlapping weaker boxes).
    """

    def __init__(self, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(nudenet_model_path(), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @staticmethod
    def preprocess(frames_rgb: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        import cv2

        out = np.empty((len(frames_rgb), 3, NUDENET_INPUT, NUDENET_INPUT), np.float32)
        for i, frame in enumerate(frames_rgb):
            h, w = frame.shape[:2]
            side = max(h, w)
            padded = np.zeros((side, side, 3), np.uint8)
            padded[:h, :w] = frame
            resized = cv2.resize(padded, (NUDENET_INPUT, NUDENET_INPUT), interpolation=cv2.INTER_LINEAR)
            # NudeNet reads files as BGR, swaps to RGB (cvtColor) and swaps back (blobFromImage
            # swapRB): its model sees B, G, R planes. From RGB frames that is the reversed order.
            out[i] = resized[:, :, ::-1].transpose(2, 0, 1)
        out *= np.float32(1.0 / 255.0)
        return out

    def class_max(self, frames_rgb, batch: int = 16) -> np.ndarray:
        """(N, 18) best score per NudeNet class per frame (0 where no box of that class)."""
        results = []
        for i in range(0, len(frames_rgb), batch):
            blob = self.preprocess(frames_rgb[i:i + batch])
            raw = self.session.run(None, {self.input_name: blob})[0]  # (B, 4 + 18, boxes)
            cls = raw[:, 4:, :]  # (B, 18, boxes)
            best = cls.max(axis=1)  # (B, boxes)
            arg = cls.argmax(axis=1)
            keep = best >= NUDENET_MIN_SCORE
            per = np.zeros((len(blob), len(NUDENET_LABELS)), np.float32)
            b_idx, box_idx = np.nonzero(keep)
            np.maximum.at(per, (b_idx, arg[b_idx, box_idx]), best[b_idx, box_idx])
            results.append(per)
        return np.concatenate(results) if results else np.zeros((0, len(NUDENET_LABELS)), np.float32)


# ============================================================================ lock


class ScanLock(FileLock):
    """``moderation.lock`` in the index directory: one moderation scan at a time.

    Separate from the indexer's ``writer.lock`` (which the scan also takes while it writes,
    as every DuckDB writer does); this one names the scan that is running.
    """

    def __init__(self, index_dir: str):
        super().__init__(os.path.join(index_dir, LOCK_FILE), holder="vidx moderate")

    def acquire(self) -> None:
        try:
            super().acquire()
        except IndexLocked as exc:
            raise ModerationError(str(exc)) from None

    def locked_message(self, holder: str) -> str:
        return (f"another moderation scan of {os.path.dirname(self.path)} is running "
                f"({holder}); scans do not overlap: wait for it to finish")


# ============================================================================ storage

_SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS moderation_flag_ids START 1;
CREATE TABLE IF NOT EXISTS moderation_policies (
    policy_version VARCHAR, name VARCHAR, source VARCHAR, content VARCHAR, display VARCHAR,
    first_used_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS moderation_runs (
    run_id BIGINT, policy_version VARCHAR, policy_name VARCHAR, started_at TIMESTAMP,
    finished_at TIMESTAMP, status VARCHAR, detectors VARCHAR, scope VARCHAR,
    embedding_scanned BIGINT, nudenet_scanned BIGINT, new_flags BIGINT, stats VARCHAR);
CREATE TABLE IF NOT EXISTS moderation_scanned (
    clip_id BIGINT, detector VARCHAR, detector_version VARCHAR, run_id BIGINT);
CREATE TABLE IF NOT EXISTS moderation_flags (
    flag_id BIGINT, clip_id BIGINT, video_id BIGINT, category VARCHAR, label VARCHAR,
    severity VARCHAR, score DOUBLE, threshold DOUBLE, detector VARCHAR, evidence VARCHAR,
    policy_version VARCHAR, run_id BIGINT, last_run_id BIGINT, status VARCHAR,
    reviewer VARCHAR, note VARCHAR, path VARCHAR, fingerprint VARCHAR, start_s DOUBLE,
    end_s DOUBLE, snippet_times_s DOUBLE[], created_at TIMESTAMP, updated_at TIMESTAMP,
    reviewed_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS moderation_decisions (
    flag_id BIGINT, decision VARCHAR, reviewer VARCHAR, note VARCHAR, decided_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS moderation_text_vectors (model_id VARCHAR, text VARCHAR, vector FLOAT[]);
"""

_FLAG_COLUMNS = ("flag_id", "status", "category", "label", "severity", "score", "threshold", "detector",
                 "path", "start_s", "end_s", "clip_id", "video_id", "policy_version", "run_id",
                 "last_run_id", "evidence", "snippet_times_s", "created_at", "updated_at", "reviewer",
                 "note", "reviewed_at")
_SEVERITY_ORDER = "CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 ELSE 3 END"


@dataclass(frozen=True)
class Scope:
    """Which clips a scan looks at: all, under some paths, and/or indexed since a time."""

    paths: tuple[str, ...] = ()  # absolute files or folders
    since: object | None = None  # datetime (naive = local time) on videos.indexed_at

    def where(self) -> tuple[str, list]:
        clauses, params = ["v.status = 'indexed'"], []
        if self.paths:
            paths = [s for p in self.paths for s in spellings(p)]  # as typed, pasted, NFC or NFD
            folders = [p.rstrip(os.sep) + os.sep for p in paths]
            clauses.append("(list_contains(?, v.path) OR "
                           + " OR ".join("starts_with(v.path, ?)" for _ in folders) + ")")
            params += [[to_stored(p) for p in paths], *(to_stored(f) for f in folders)]
        if self.since is not None:
            clauses.append("v.indexed_at >= ?")
            params.append(self.since)
        return " AND ".join(clauses), params

    def describe(self) -> str:
        parts = []
        if self.paths:
            parts.append("under " + ", ".join(display_path(p) for p in self.paths))
        if self.since is not None:
            parts.append(f"indexed since {self.since}")
        return "; ".join(parts) or "whole index"


class ModerationStore:
    """Moderation tables inside an open ``IndexStore`` (its DuckDB connection)."""

    def __init__(self, store):
        self.store = store

    @property
    def con(self):
        # Not cached: a writer's connection is closed between batches (IndexStore.release_connection).
        return self.store.con

    # -- schema ------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        self.con.execute(_SCHEMA)

    def has_schema(self) -> bool:
        rows = self.con.execute("SELECT count(*) FROM information_schema.tables "
                                "WHERE table_name = 'moderation_flags'").fetchall()
        return bool(rows[0][0])

    # -- policy, runs ------------------------------------------------------------------
    def register_policy(self, policy: Policy) -> None:
        rows = self.con.execute("SELECT 1 FROM moderation_policies WHERE policy_version = ?",
                                [policy.version]).fetchall()
        if not rows:
            self.con.execute("INSERT INTO moderation_policies VALUES (?, ?, ?, ?, ?, now())",
                             [policy.version, policy.name, policy.source, json.dumps(policy.normalised()),
                              json.dumps(policy.display())])

    def start_run(self, policy: Policy, detectors: Sequence[str], scope: Scope, args: dict) -> int:
        run_id = self.store.start_run("moderate", {**args, "policy_version": policy.version,
                                                   "policy": policy.source})
        self.con.execute("INSERT INTO moderation_runs VALUES (?, ?, ?, now(), NULL, 'running', ?, ?, 0, 0, 0, NULL)",
                         [run_id, policy.version, policy.name, ",".join(detectors), scope.describe()])
        return run_id

    def finish_run(self, run_id: int, status: str, stats: dict) -> None:
        self.con.execute("UPDATE moderation_runs SET finished_at = now(), status = ?, stats = ? WHERE run_id = ?",
                         [status, json.dumps(stats, default=str), run_id])
        self.store.finish_run(run_id, status, stats)

    def runs(self, limit: int = 20) -> list[dict]:
        cur = self.con.execute(
            "SELECT run_id, policy_version, policy_name, started_at, finished_at, status, detectors, scope, "
            "embedding_scanned, nudenet_scanned, new_flags FROM moderation_runs ORDER BY run_id DESC LIMIT ?",
            [limit])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    # -- what is due -------------------------------------------------------------------
    def _due_sql(self, model_id: str, detector: str, version: str, scope: Scope, rescan: bool,
                 select: str, order: str = "") -> tuple[str, list]:
        where, params = scope.where()
        sql = (f"SELECT {select} FROM clip_vectors cv JOIN clips c ON c.clip_id = cv.clip_id "
               f"JOIN videos v ON v.video_id = c.video_id WHERE cv.model_id = ? AND {where}")
        params = [model_id, *params]
        if not rescan:
            sql += (" AND NOT EXISTS (SELECT 1 FROM moderation_scanned s WHERE s.clip_id = cv.clip_id "
                    "AND s.detector = ? AND s.detector_version = ?)")
            params += [detector, version]
        return sql + order, params

    def count_in_scope(self, model_id: str, scope: Scope) -> int:
        sql, params = self._due_sql(model_id, "", "", scope, True, "count(*)")
        return int(self.con.execute(sql, params).fetchall()[0][0])

    def count_due(self, model_id: str, detector: str, version: str, scope: Scope, rescan: bool = False) -> int:
        sql, params = self._due_sql(model_id, detector, version, scope, rescan, "count(*)")
        return int(self.con.execute(sql, params).fetchall()[0][0])

    def due_ids(self, model_id: str, detector: str, version: str, scope: Scope, rescan: bool = False) -> np.ndarray:
        """Sorted ids of the clips in scope not yet scanned by ``detector`` under ``version``."""
        sql, params = self._due_sql(model_id, detector, version, scope, rescan, "cv.clip_id")
        ids = self.con.sql(sql, params=params).fetchnumpy()["clip_id"]
        return np.sort(np.asarray(ids, np.int64))

    def due_vectors(self, model_id: str, dim: int, due: np.ndarray, batch_rows: int):
        """Yield (clip ids, (n, dim) float32 vectors) for the sorted clip ids ``due``.

        The vectors stream out of DuckDB through Arrow on a second connection (a cursor), so
        batches can be committed on the main one while the read goes on, and a reader thread
        fetches the next batch while the caller scores and commits this one (DuckDB and Arrow
        release the GIL). The scan reads the id range of ``due`` (new clips have the highest
        ids, so a nightly scan reads only the tail) and keeps the due rows with a vectorised
        membership test: no hash join is built over the vectors.
        """
        import queue
        import threading

        if len(due) == 0:
            return
        sql = (f"SELECT clip_id, vector::FLOAT[{int(dim)}] AS vector FROM clip_vectors "
               f"WHERE model_id = ? AND clip_id BETWEEN ? AND ?")
        params = [model_id, int(due[0]), int(due[-1])]
        cursor = self.con.cursor()
        batches: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()
        done = object()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    batches.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def read() -> None:
            try:
                rel = cursor.sql(sql, params=params)
                reader = (rel.to_arrow_reader(batch_rows) if hasattr(rel, "to_arrow_reader")
                          else rel.fetch_arrow_reader(batch_rows))
                for batch in reader:
                    n = batch.num_rows
                    if n == 0:
                        continue
                    ids = batch.column(0).to_numpy().astype(np.int64, copy=False)
                    mat = batch.column(1).flatten().to_numpy(zero_copy_only=False).reshape(n, dim)
                    pos = np.minimum(np.searchsorted(due, ids), len(due) - 1)
                    keep = due[pos] == ids
                    if not keep.all():
                        if not keep.any():
                            continue
                        ids, mat = ids[keep], mat[keep]
                    if not put((ids, mat)):
                        return
                put(done)
            except BaseException as exc:  # handed to the consumer, raised there
                put(exc)

        thread = threading.Thread(target=read, name="vidx-moderation-reader", daemon=True)
        thread.start()
        try:
            while True:
                item = batches.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()
            cursor.close()

    def due_clips(self, model_id: str, detector: str, version: str, scope: Scope, rescan: bool) -> list[dict]:
        """Clips due for a frame detector, with what re-decoding needs, ordered by video and time."""
        sql, params = self._due_sql(
            model_id, detector, version, scope, rescan,
            "c.clip_id, c.video_id, c.idx, c.start_s, c.end_s, len(c.snippet_times_s) AS k, v.path, "
            "v.size_bytes, v.mtime_ns, v.duration_s", " ORDER BY c.video_id, c.start_s")
        cur = self.con.execute(sql, params)
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
        for r in rows:
            r["path"] = from_stored(r["path"])
        return rows

    # -- writing a batch ---------------------------------------------------------------
    def commit_batch(self, run_id: int, policy_version: str, detector: str, detector_version: str,
                     scanned_ids: np.ndarray, hits: pa.Table | None,
                     hook: Callable[[str], None] | None = None, replace: bool = False) -> list[int]:
        """In ONE transaction: the batch's flags (merged into existing ones) and its clips
        marked scanned. Returns the ids of new flags. A crash leaves all or nothing of it.

        ``hits``: clip_id, category, label, severity, score, threshold, detail (JSON or null).
        """
        new_ids: list[int] = []
        self.con.execute("BEGIN TRANSACTION")
        try:
            if hits is not None and hits.num_rows:
                new_ids = self._merge_flags(run_id, policy_version, detector, hits)
            self.con.register("_mod_scanned", pa.table({"clip_id": pa.array(scanned_ids, pa.int64())}))
            try:
                if replace:  # a forced rescan: one mark per clip and version all the same
                    self.con.execute("DELETE FROM moderation_scanned WHERE detector = ? AND detector_version = ? "
                                     "AND clip_id IN (SELECT clip_id FROM _mod_scanned)", [detector, detector_version])
                self.con.execute("INSERT INTO moderation_scanned SELECT clip_id, ?, ?, ? FROM _mod_scanned",
                                 [detector, detector_version, run_id])
            finally:
                self.con.unregister("_mod_scanned")
            column = "embedding_scanned" if detector == "embedding" else "nudenet_scanned"
            self.con.execute(f"UPDATE moderation_runs SET {column} = {column} + ?, new_flags = new_flags + ? "
                             f"WHERE run_id = ?", [len(scanned_ids), len(new_ids), run_id])
            if hook is not None:
                hook("batch_written")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")
        if hook is not None:
            hook("batch_committed")
        return new_ids

    def _merge_flags(self, run_id: int, policy_version: str, detector: str, hits: pa.Table) -> list[int]:
        self.con.register("_mod_hits_in", hits)
        try:
            self.con.execute(
                "CREATE OR REPLACE TEMP TABLE _mod_hits AS SELECT h.clip_id, h.category, h.label, h.severity, "
                "h.score, h.threshold, json_object(?, json_merge_patch(json_object('score', round(h.score, 4), "
                "'threshold', h.threshold, 'policy_version', ?), coalesce(h.detail, '{}')))::VARCHAR AS evidence, "
                "c.video_id, c.start_s, c.end_s, c.snippet_times_s, v.path, v.fingerprint "
                "FROM _mod_hits_in h JOIN clips c ON c.clip_id = h.clip_id JOIN videos v ON v.video_id = c.video_id",
                [detector, policy_version])
        finally:
            self.con.unregister("_mod_hits_in")
        # Open flags of the same clip and category take the new evidence (no duplicate);
        # confirmed and cleared ones are left exactly as the reviewer left them.
        self.con.execute(
            "UPDATE moderation_flags AS f SET "
            "score = CASE WHEN f.policy_version = $pv THEN greatest(f.score, h.score) ELSE h.score END, "
            "detector = CASE WHEN f.policy_version = $pv AND f.score > h.score THEN f.detector ELSE $det END, "
            "threshold = CASE WHEN f.policy_version = $pv AND f.score > h.score THEN f.threshold ELSE h.threshold END, "
            "evidence = json_merge_patch(CASE WHEN f.policy_version = $pv THEN f.evidence ELSE '{}' END, "
            "h.evidence)::VARCHAR, label = h.label, severity = h.severity, policy_version = $pv, "
            "last_run_id = $run, updated_at = now() "
            "FROM _mod_hits h WHERE f.clip_id = h.clip_id AND f.category = h.category AND f.status = 'open'",
            {"pv": policy_version, "det": detector, "run": run_id})
        rows = self.con.execute(
            "INSERT INTO moderation_flags (flag_id, clip_id, video_id, category, label, severity, score, "
            "threshold, detector, evidence, policy_version, run_id, last_run_id, status, path, fingerprint, "
            "start_s, end_s, snippet_times_s, created_at, updated_at) "
            "SELECT nextval('moderation_flag_ids'), h.clip_id, h.video_id, h.category, h.label, h.severity, "
            "h.score, h.threshold, $det, h.evidence, $pv, $run, $run, 'open', h.path, h.fingerprint, h.start_s, "
            "h.end_s, h.snippet_times_s, now(), now() FROM _mod_hits h "
            "WHERE NOT EXISTS (SELECT 1 FROM moderation_flags f WHERE f.clip_id = h.clip_id "
            "                  AND f.category = h.category) "
            "  AND NOT EXISTS (SELECT 1 FROM moderation_flags f WHERE f.status = 'cleared' "
            "                  AND f.category = h.category AND f.fingerprint = h.fingerprint "
            "                  AND f.start_s = h.start_s AND f.end_s = h.end_s) "
            "RETURNING flag_id",
            {"pv": policy_version, "det": detector, "run": run_id}).fetchall()
        self.con.execute("DROP TABLE _mod_hits")
        return sorted(int(r[0]) for r in rows)

    # -- text embedding cache ----------------------------------------------------------
    def cached_text_vectors(self, model_id: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if not texts:
            return {}
        rows = self.con.execute("SELECT text, vector FROM moderation_text_vectors WHERE model_id = ? "
                                "AND list_contains(?, text)", [model_id, list(texts)]).fetchall()
        return {t: np.asarray(v, np.float32) for t, v in rows}

    def store_text_vectors(self, model_id: str, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        texts = list(vectors)
        mat = np.stack([np.asarray(vectors[t], np.float32) for t in texts])
        table = pa.table({
            "model_id": pa.array([model_id] * len(texts), pa.string()), "text": pa.array(texts, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), mat.shape[1])})
        self.con.register("_mod_text", table)
        try:
            self.con.execute("INSERT INTO moderation_text_vectors SELECT model_id, text, vector::FLOAT[] FROM _mod_text")
        finally:
            self.con.unregister("_mod_text")

    # -- flags: listing and review -------------------------------------------------------
    def flags(self, status: str | None = "open", category: str | None = None, run_id: int | None = None,
              flag_ids: Sequence[int] | None = None, min_score: float | None = None,
              limit: int | None = None) -> list[dict]:
        clauses, params = [], []
        if status and status != "all":
            clauses.append("status = ?")
            params.append(status)
        if category:
            clauses.append("category = ?")
            params.append(category)
        if run_id is not None:
            clauses.append("run_id = ?")
            params.append(run_id)
        if flag_ids is not None:
            clauses.append("list_contains(?, flag_id)")
            params.append([int(i) for i in flag_ids])
        if min_score is not None:
            clauses.append("score >= ?")
            params.append(min_score)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        sql = (f"SELECT {', '.join(_FLAG_COLUMNS)} FROM moderation_flags {where} "
               f"ORDER BY {_SEVERITY_ORDER}, score DESC, flag_id")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        cur = self.con.execute(sql, params)
        rows = cur.fetchall()
        return [_flag_dict(dict(zip(_FLAG_COLUMNS, r))) for r in rows]

    def decide(self, flag_ids: Sequence[int], decision: str, reviewer: str, note: str | None) -> list[dict]:
        """Confirm, clear or reopen flags (all or none). Returns the updated flags."""
        status = {"confirm": "confirmed", "clear": "cleared", "reopen": "open"}[decision]
        ids = sorted({int(i) for i in flag_ids})
        found = {r[0] for r in self.con.execute("SELECT flag_id FROM moderation_flags WHERE list_contains(?, flag_id)",
                                                [ids]).fetchall()}
        missing = [i for i in ids if i not in found]
        if missing:
            raise ModerationError(f"no flag with id {', '.join(f'#{i}' for i in missing)}; "
                                  f"'vidx moderate review' lists the open ones")
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.execute(
                "UPDATE moderation_flags SET status = ?, reviewer = ?, note = coalesce(?, note), "
                "reviewed_at = CASE WHEN ? = 'open' THEN NULL ELSE now() END, updated_at = now() "
                "WHERE list_contains(?, flag_id)", [status, reviewer, note, status, ids])
            self.con.executemany("INSERT INTO moderation_decisions VALUES (?, ?, ?, ?, now())",
                                 [(i, status, reviewer, note) for i in ids])
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")
        return self.flags(status=None, flag_ids=ids)

    def decisions(self, flag_id: int) -> list[dict]:
        cur = self.con.execute("SELECT flag_id, decision, reviewer, note, decided_at FROM moderation_decisions "
                               "WHERE flag_id = ? ORDER BY decided_at", [flag_id])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def counts(self) -> dict:
        rows = self.con.execute("SELECT status, count(*) FROM moderation_flags GROUP BY status").fetchall()
        out = {s: 0 for s in STATUSES}
        out.update({s: int(n) for s, n in rows})
        return out


def _flag_dict(row: dict) -> dict:
    row["path"] = from_stored(row["path"])
    row["score"] = round(float(row["score"]), 4) if row["score"] is not None else None
    row["start"] = format_timestamp(row["start_s"] or 0.0)
    row["end"] = format_timestamp(row["end_s"] or 0.0)
    try:
        row["evidence"] = json.loads(row["evidence"]) if row["evidence"] else {}
    except ValueError:
        pass
    times = list(row.get("snippet_times_s") or [])
    row["snippet_times_s"] = times
    row["thumbnail_s"] = times[len(times) // 2] if times else ((row["start_s"] or 0) + (row["end_s"] or 0)) / 2
    return row


def format_timestamp(seconds: float) -> str:
    ms = int(round(float(seconds) * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


# ============================================================================ reports

CSV_COLUMNS = ("flag_id", "status", "category", "label", "severity", "score", "threshold", "detector", "path",
               "start", "end", "start_s", "end_s", "clip_id", "video_id", "policy_version", "run_id",
               "created_at", "reviewer", "note", "reviewed_at")


def report_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    fmt = {".json": "json", ".csv": "csv", ".html": "html", ".htm": "html"}.get(ext)
    if fmt is None:
        raise ModerationError(f"report {path}: unknown format '{ext or '(none)'}'; use a .json, .csv or "
                              f".html file name")
    return fmt


def write_report(path: str, flags: list[dict], meta: dict, max_thumbnails: int = 500) -> str:
    """Write ``flags`` as JSON, CSV or a self-contained HTML page (by the file's extension)."""
    fmt = report_format(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    if fmt == "json":
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({**meta, "flags": flags}, fh, indent=2, default=str)
            fh.write("\n")
    elif fmt == "csv":
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            for f in flags:
                writer.writerow(["" if f.get(c) is None else display_path(f[c]) if c == "path" else f.get(c)
                                 for c in CSV_COLUMNS])
    else:
        page = render_html(flags, meta, max_thumbnails)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(page)
    os.replace(tmp, path)
    return fmt


def thumbnails(flags: list[dict], short_side: int = 180, max_count: int = 500) -> dict[int, str]:
    """flag id -> base64 JPEG of the frame at each flag's middle snippet time (PyAV)."""
    by_path: dict[str, list[dict]] = {}
    for f in flags[:max_count]:
        by_path.setdefault(f["path"], []).append(f)
    out: dict[int, str] = {}
    for path, group in by_path.items():
        frames = _frames_at(path, sorted({g["thumbnail_s"] for g in group}), short_side)
        for g in group:
            rgb = frames.get(g["thumbnail_s"])
            if rgb is not None:
                out[g["flag_id"]] = _jpeg_b64(rgb)
    return out


def _frames_at(path: str, times: list[float], short_side: int) -> dict[float, np.ndarray]:
    """RGB frames nearest ``times`` (seconds from the first frame), one seek each; {} on failure."""
    import av

    from indexer.decode import target_size
    from indexer.probe import ProbeFailure, open_container, probe_video

    try:
        probe = probe_video(path)
        container = open_container(path)
    except (ProbeFailure, OSError, av.error.FFmpegError):
        return {}
    out: dict[float, np.ndarray] = {}
    size = target_size(probe, short_side)
    try:
        stream = next(s for s in container.streams.video if s.index == probe.video_stream_index)
        tb = stream.time_base
        for t in times:
            try:
                target = t + probe.start_time_s
                container.seek(int(max(target, 0) / tb) if tb else 0, stream=stream, backward=True, any_frame=False)
                best = None
                for frame in container.decode(stream):
                    ft = frame.time if frame.time is not None else target
                    best = frame
                    if ft >= target - 0.5 / max(probe.avg_fps or 25.0, 1.0):
                        break
                if best is not None:
                    rgb = best.to_ndarray(width=size[0], height=size[1], format="rgb24")
                    if probe.rotation_deg:
                        rgb = np.ascontiguousarray(np.rot90(rgb, k=probe.rotation_deg // 90))
                    out[t] = rgb
            except (av.error.FFmpegError, ValueError, OSError):
                continue
    finally:
        container.close()
    return out


def _jpeg_b64(rgb: np.ndarray, quality: int = 80) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode("ascii")


_HTML_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 4px} .meta{color:#555;font-size:13px;margin-bottom:16px}
table{border-collapse:collapse;width:100%} th,td{border-bottom:1px solid #ddd;padding:6px 8px;
text-align:left;vertical-align:top;font-size:13px} th{background:#f4f4f4}
img{max-width:320px;max-height:180px;display:block} .sev-critical{color:#fff;background:#7b1fa2}
.sev-high{color:#fff;background:#c62828} .sev-medium{background:#f9a825} .sev-low{background:#c5e1a5}
.sev{padding:1px 6px;border-radius:3px;font-weight:600} code{font-size:12px;word-break:break-all}
.noimg{width:160px;height:90px;background:#eee;color:#888;display:flex;align-items:center;
justify-content:center;font-size:11px}
"""


def render_html(flags: list[dict], meta: dict, max_thumbnails: int = 500) -> str:
    thumbs = thumbnails(flags, max_count=max_thumbnails)
    esc = html.escape
    rows = []
    for f in flags:
        b64 = thumbs.get(f["flag_id"])
        img = (f'<img alt="frame at {esc(format_timestamp(f["thumbnail_s"]))}" '
               f'src="data:image/jpeg;base64,{b64}">' if b64 else '<div class="noimg">no thumbnail</div>')
        evidence = f.get("evidence") or {}
        detail = "; ".join(
            f"{det}: " + ", ".join(f"{k}={v}" for k, v in info.items() if k != "policy_version")
            for det, info in evidence.items() if isinstance(info, dict))
        rows.append(
            f"<tr><td>{img}</td><td>#{f['flag_id']}<br>{esc(str(f['status']))}</td>"
            f"<td><b>{esc(str(f['label'] or f['category']))}</b><br><code>{esc(str(f['category']))}</code></td>"
            f"<td><span class=\"sev sev-{esc(str(f['severity']))}\">{esc(str(f['severity']))}</span></td>"
            f"<td>{f['score']:.3f}<br><small>{esc(str(f['detector']))}</small></td>"
            f"<td><code>{esc(display_path(str(f['path'])))}</code><br>{esc(f['start'])} &ndash; {esc(f['end'])} "
            f"({f['start_s']:.3f}&ndash;{f['end_s']:.3f} s)<br><small>{esc(detail)}</small></td>"
            f"<td><small>policy {esc(str(f['policy_version']))}<br>run {f['run_id']}"
            + (f"<br>reviewed by {esc(str(f['reviewer']))}" if f.get("reviewer") else "")
            + (f"<br>{esc(str(f['note']))}" if f.get("note") else "")
            + "</small></td></tr>")
    title = esc(str(meta.get("title", "vidx moderation report")))
    info = " &middot; ".join(esc(f"{k}: {v}") for k, v in meta.items() if k != "title" and not isinstance(v, (dict, list)))
    body = "\n".join(rows) if rows else '<tr><td colspan="7">no flags</td></tr>'
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{_HTML_STYLE}</style></head><body><h1>{title}</h1><div class=\"meta\">{info}<br>"
            f"{len(flags)} flag(s)</div><table><thead><tr><th>frame</th><th>flag</th><th>category</th>"
            f"<th>severity</th><th>score</th><th>file and time</th><th>policy / review</th></tr></thead>"
            f"<tbody>\n{body}\n</tbody></table></body></html>\n")


def new_flag_table(clip_ids: np.ndarray, cat_index: np.ndarray, scores: np.ndarray, policy: Policy,
                   categories: Iterable[Category] | None = None, detail: Sequence[str | None] | None = None,
                   threshold: float | np.ndarray | None = None) -> pa.Table:
    """The hits of a batch as the Arrow table ``ModerationStore.commit_batch`` takes (no Python loop
    over clips: categories are looked up by index)."""
    cats = list(categories if categories is not None else policy.categories)
    keys = np.array([c.key for c in cats], dtype=object)
    labels = np.array([c.label for c in cats], dtype=object)
    sev = np.array([c.severity for c in cats], dtype=object)
    thr = (np.array([c.threshold for c in cats], np.float64)[cat_index] if threshold is None
           else np.broadcast_to(np.asarray(threshold, np.float64), cat_index.shape))
    return pa.table({
        "clip_id": pa.array(np.asarray(clip_ids, np.int64)),
        "category": pa.array(keys[cat_index], pa.string()),
        "label": pa.array(labels[cat_index], pa.string()),
        "severity": pa.array(sev[cat_index], pa.string()),
        "score": pa.array(np.asarray(scores, np.float64)),
        "threshold": pa.array(np.asarray(thr, np.float64)),
        "detail": pa.array(list(detail) if detail is not None else [None] * len(cat_index), pa.string()),
    })


# ============================================================================ small helpers


def parse_since(text: str, now: float | None = None):
    """``--since``: an ISO date/time (local time) or a span back from now: 90m, 36h, 7d, 2w."""
    from datetime import datetime, timedelta

    value = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", value.lower())
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        base = datetime.fromtimestamp(now) if now is not None else datetime.now()
        return base - timedelta(seconds=float(m.group(1)) * unit)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ModerationError(f"--since: cannot read '{text}'; use a date (2024-05-01), a date and time "
                              f"(2024-05-01T18:00) or a span back from now (90m, 36h, 7d, 2w)") from None
    if when.tzinfo is not None:  # stored times are local wall-clock times
        when = when.astimezone().replace(tzinfo=None)
    return when


def lock_holder(index_dir: str) -> str:
    """Who keeps the index busy, for error messages: a moderation scan, or 'vidx index'."""
    path = os.path.join(index_dir, LOCK_FILE)
    if os.path.exists(path):
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh, fcntl.LOCK_UN)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip()
                if f"pid {os.getpid()} " not in holder + " ":  # not this very scan
                    return f"a moderation scan ({holder or 'running'})"
    try:
        with open(os.path.join(index_dir, "writer.lock"), "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh, fcntl.LOCK_UN)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "a vidx process"
                return f"the process writing it ({holder}; usually 'vidx index')"
    except OSError:
        pass
    return "another process that has the database open (a search or status query)"


def open_index(index_dir: str, write: bool):
    """Open the index for moderation: read-only for listing, read-write (with the writer lock) to
    record scans and decisions. Errors name who holds the index; the CLI exits 2 on them."""
    import duckdb

    from indexer.store import DB_FILE, IndexMissing, IndexStore

    db = os.path.join(index_dir, DB_FILE)
    if not os.path.exists(db):
        raise ModerationError(f"no index at {index_dir}; build one with 'vidx index FOLDER' "
                              f"(or point --db / VIDX_DB at an existing index)")
    store = IndexStore(index_dir, read_only=not write)
    try:
        store.open()
    except (IndexLocked, duckdb.IOException) as exc:
        if isinstance(exc, duckdb.IOException) and "lock" not in str(exc).lower():
            raise ModerationError(f"cannot open {db}: {exc}") from None
        action = "record moderation results in" if write else "read"
        raise ModerationError(f"cannot {action} index {index_dir}: it is in use by {lock_holder(index_dir)} "
                              f"(DuckDB allows one writing process); run this again when that has "
                              f"finished") from None
    except IndexMissing as exc:
        raise ModerationError(str(exc)) from None
    return store
