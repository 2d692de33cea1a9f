"""``vidx moderate``: an incremental content-moderation scan of an index, driven by a policy.

Flow: load and validate the policy (fail fast, before any lock) -> take
``moderation.lock`` (one scan at a time) -> open the index read-write (fails with
a clear message while ``vidx index`` writes it) -> count what is due:

* **embedding detector**: every clip in scope that has no scan mark for the
  current embedding version of the policy. Its stored vectors stream out of DuckDB
  through Arrow in batches; each batch is scored with one matrix multiply
  (``indexer.moderation.PromptBank``) and its flags plus its scan marks are
  committed in ONE transaction, so an interrupted scan resumes where it stopped
  without losing or duplicating a flag. Nothing is decoded; the model is loaded
  only when a prompt's text embedding is not cached in the index yet.
* **NudeNet detector** (optional, ``pip install 'vidx[nudenet]'``): clips due for
  its version are re-decoded from their files at their stored snippet times, on
  Ray CPU workers (one task per video), and scored with NudeNet's ONNX detector; a
  clip is flagged when the best score of a configured class over its frames
  reaches the policy's threshold. Results are committed in batches the same way.
  When NudeNet is not installed the detector is skipped with a message and its
  clips stay due, so they are scanned once it is installed.

Exit status (``ScanSummary.exit_code``): 0 nothing new, 1 new flags; errors raise
``ModerationError`` (and friends), which the CLI turns into exit status 2.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from indexer.config import Settings
from indexer.pathtext import UNSTORABLE_NAME, display_path, is_storable_path
from indexer.model import warn_if_random_index
from indexer.moderation import (NUDENET_INPUT, NUDENET_LABELS, ModerationError, ModerationStore, Policy,
                                PromptBank, ScanLock, Scope, build_prompt_bank, load_policy, new_flag_table,
                                nudenet_unavailable, open_index, write_report)
from indexer.types import ClipSpan

if TYPE_CHECKING:
    from indexer.watch import DecodeHeartbeat

log = logging.getLogger(__name__)

EXIT_NOTHING_NEW, EXIT_NEW_FLAGS, EXIT_ERROR = 0, 1, 2
_TEXT_BATCH = 256


@dataclass
class ScanOptions:
    policy_path: str | None = None  # None: the shipped default policy
    paths: tuple[str, ...] = ()  # only videos under these files/folders
    since: datetime | None = None  # only videos indexed since then
    rescan: bool = False  # score clips again even if scanned under this policy version
    embedding: bool = True
    nudenet: bool | None = None  # None: as the policy says (skipped with a message if not installed)
    batch_clips: int = 65_536  # embedding clips per transaction
    nudenet_commit_s: float = 2.0  # NudeNet results are committed at least this often
    reports: tuple[str, ...] = ()  # .json / .csv / .html files for the new flags
    max_thumbnails: int = 500


@dataclass
class ScanSummary:
    index_dir: str
    run_id: int = 0
    status: str = "ok"
    policy_name: str = ""
    policy_version: str = ""
    policy_source: str = ""
    model_id: str | None = None
    scope: str = "whole index"
    detectors: list = field(default_factory=list)
    clips_in_scope: int = 0
    embedding_due: int = 0
    embedding_scanned: int = 0
    prompt_s: float = 0.0  # embedding the policy's prompts (0 when cached in the index)
    embedding_s: float = 0.0  # streaming, scoring and committing the due clips
    nudenet_due: int = 0
    nudenet_scanned: int = 0
    nudenet_frames: int = 0
    nudenet_s: float = 0.0
    new_flags: int = 0
    new_flags_by_category: dict = field(default_factory=dict)
    open_flags: int = 0
    skipped: dict = field(default_factory=dict)  # detector -> why it did not run
    errors: list = field(default_factory=list)  # {path, clips, reason}: clips left due
    reports: list = field(default_factory=list)
    wall_s: float = 0.0
    flags: list = field(default_factory=list)  # the new flags (dicts)

    @property
    def exit_code(self) -> int:
        return EXIT_NEW_FLAGS if self.new_flags else EXIT_NOTHING_NEW

    @property
    def embedding_clips_per_s(self) -> float:
        return self.embedding_scanned / self.embedding_s if self.embedding_s > 0 else 0.0

    def stats(self) -> dict:
        d = asdict(self)
        d.pop("flags")
        d["embedding_clips_per_s"] = round(self.embedding_clips_per_s, 1)
        return d

    def as_dict(self) -> dict:
        d = self.stats()
        d["exit_code"] = self.exit_code
        d["flags"] = self.flags
        return d


def scan(settings: Settings, options: ScanOptions | None = None, show_progress: bool = False,
         text_encoder=None, hook=None) -> ScanSummary:
    """Run one moderation scan of ``settings.index_dir``; the library entry point of ``vidx moderate``.

    ``text_encoder`` (texts -> (n, dim) unit vectors) replaces the index's model for the
    prompts (tests); ``hook(stage)`` is called inside and after each batch transaction
    ("batch_written", "batch_committed"), to simulate a crash.
    """
    options = options or ScanOptions()
    t0 = time.monotonic()
    policy = load_policy(options.policy_path)
    index_dir = settings.index_dir
    summary = ScanSummary(index_dir=index_dir, policy_name=policy.name, policy_version=policy.version,
                          policy_source=policy.source)
    scope = Scope(tuple(os.path.abspath(os.path.expanduser(p)) for p in options.paths), options.since)
    for p in scope.paths:
        if not is_storable_path(p):
            raise ModerationError(f"{display_path(p)} cannot be in the index: {UNSTORABLE_NAME}")
    summary.scope = scope.describe()
    if not os.path.isdir(index_dir):
        raise ModerationError(f"no index at {index_dir}; build one with 'vidx index FOLDER' "
                              f"(or point --db / VIDX_DB at an existing index)")
    with ScanLock(index_dir):
        store = open_index(index_dir, write=True)
        try:
            _scan_locked(store, policy, scope, settings, options, summary, show_progress, text_encoder, hook)
        finally:
            store.close()
    summary.wall_s = time.monotonic() - t0
    # Reports decode thumbnails from the files: done after the index is released.
    meta = {"title": f"vidx moderation: {summary.new_flags} new flag(s)", "index": index_dir,
            "run_id": summary.run_id, "policy": f"{policy.name} ({policy.version})", "scope": summary.scope,
            "generated_at": datetime.now().isoformat(timespec="seconds")}
    for path in options.reports:
        write_report(path, summary.flags, meta, options.max_thumbnails)
        summary.reports.append(os.path.abspath(path))
    return summary


def _scan_locked(store, policy: Policy, scope: Scope, settings: Settings, options: ScanOptions,
                 summary: ScanSummary, show_progress: bool, text_encoder, hook) -> None:
    mstore = ModerationStore(store)
    mstore.ensure_schema()
    model_id = store.index_model()
    if model_id is None:
        raise ModerationError(f"index {store.index_dir} holds no clip vectors yet; run 'vidx index FOLDER' first")
    summary.model_id = model_id
    rows = store.con.execute("SELECT name, pretrained, dim, logit_scale FROM models WHERE model_id = ?",
                             [model_id]).fetchall()
    if not rows:
        raise ModerationError(f"index {store.index_dir} does not record its model {model_id}; re-index it")
    model_name, pretrained, dim, logit_scale = rows[0]
    warn_if_random_index(model_name, pretrained)

    emb_version = policy.detector_version("embedding")
    nn_version = policy.detector_version("nudenet")
    run_nudenet = _want_nudenet(policy, options, summary)
    detectors = (["embedding"] if options.embedding else []) + (["nudenet"] if run_nudenet else [])
    summary.detectors = detectors

    mstore.register_policy(policy)
    summary.clips_in_scope = mstore.count_in_scope(model_id, scope)
    emb_due = np.zeros(0, np.int64)
    if options.embedding:
        emb_due = mstore.due_ids(model_id, "embedding", emb_version, scope, options.rescan)
        summary.embedding_due = len(emb_due)
    if run_nudenet:
        summary.nudenet_due = mstore.count_due(model_id, "nudenet", nn_version, scope, options.rescan)
    run_id = mstore.start_run(policy, detectors, scope, {
        "paths": list(scope.paths), "since": scope.since, "rescan": options.rescan, "detectors": detectors})
    summary.run_id = run_id
    status = "ok"
    new_ids: list[int] = []
    try:
        if summary.embedding_due:
            t = time.monotonic()
            bank = _prompt_bank(mstore, policy, model_id, model_name, pretrained, float(logit_scale),
                                settings, text_encoder)
            summary.prompt_s = time.monotonic() - t
            t = time.monotonic()
            new_ids += _embedding_pass(mstore, bank, policy, model_id, int(dim), emb_version, emb_due, options,
                                       summary, hook)
            del emb_due
            summary.embedding_s = time.monotonic() - t
        if run_nudenet and summary.nudenet_due:
            t = time.monotonic()
            new_ids += _nudenet_pass(mstore, policy, model_id, nn_version, scope, settings, options, summary,
                                     show_progress, hook)
            summary.nudenet_s = time.monotonic() - t
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException:
        status = "error"
        raise
    finally:
        summary.status = status
        summary.new_flags = len(set(new_ids))
        summary.flags = mstore.flags(status=None, flag_ids=sorted(set(new_ids))) if new_ids else []
        for f in summary.flags:
            summary.new_flags_by_category[f["category"]] = summary.new_flags_by_category.get(f["category"], 0) + 1
        summary.open_flags = mstore.counts()["open"]
        mstore.finish_run(run_id, status, summary.stats())


def _want_nudenet(policy: Policy, options: ScanOptions, summary: ScanSummary) -> bool:
    if options.nudenet is False:
        return False
    if policy.nudenet is None:
        if options.nudenet:
            raise ModerationError(f"policy {policy.source} has no [nudenet] section; add one (see the "
                                  f"default policy) to use the NudeNet detector")
        return False
    if options.nudenet is None and not policy.nudenet.enabled:
        return False
    reason = nudenet_unavailable()
    if reason:
        if options.nudenet:
            raise ModerationError(f"--nudenet: {reason}")
        summary.skipped["nudenet"] = reason
        log.warning("NudeNet detector skipped: %s. The embedding scan runs without it; its clips stay due "
                    "and are scanned once it is installed.", reason)
        return False
    return True


# ---------------------------------------------------------------------------- embedding detector


def _prompt_bank(mstore: ModerationStore, policy: Policy, model_id: str, model_name: str, pretrained: str,
                 logit_scale: float, settings: Settings, text_encoder) -> PromptBank:
    if text_encoder is not None:
        return build_prompt_bank(policy, text_encoder, logit_scale)
    # Text embeddings of prompts are cached per model: a nightly scan loads no model.
    texts = []
    for cat in policy.categories:
        for prompt in (*cat.positives, *policy.negatives_of(cat)):
            texts += [t.format(prompt) for t in policy.templates]
    texts = list(dict.fromkeys(texts))
    cached = mstore.cached_text_vectors(model_id, texts)
    missing = [t for t in texts if t not in cached]
    if missing:
        model = _load_model(model_id, model_name, pretrained, settings)
        fresh = {}
        for i in range(0, len(missing), _TEXT_BATCH):
            part = missing[i:i + _TEXT_BATCH]
            fresh.update(zip(part, model.encode_text(part)))
        mstore.store_text_vectors(model_id, fresh)
        cached.update(fresh)
    return build_prompt_bank(policy, lambda batch: np.stack([cached[t] for t in batch]), logit_scale)


def _load_model(model_id: str, name: str, pretrained: str, settings: Settings):
    from indexer.model import LoadedModel, resolve_model

    spec = resolve_model(name, pretrained)
    if spec.model_id != model_id:
        raise ModerationError(f"the weights found for {name} ({pretrained}) are not the ones this index was "
                              f"built with ({model_id} vs {spec.model_id}); restore them to embed the policy's "
                              f"prompts")
    return LoadedModel(spec, device="cpu", threads=settings.torch_threads)


def _embedding_pass(mstore: ModerationStore, bank: PromptBank, policy: Policy, model_id: str, dim: int,
                    version: str, due: np.ndarray, options: ScanOptions, summary: ScanSummary, hook) -> list[int]:
    new_ids: list[int] = []
    # closing(): the reader thread and its cursor stop at once when a batch fails or is interrupted.
    with contextlib.closing(mstore.due_vectors(model_id, dim, due, options.batch_clips)) as batches:
        for ids, vectors in batches:
            scores = bank.score(vectors)
            rows, cats = bank.hits(scores)
            hits = new_flag_table(ids[rows], cats, scores[rows, cats], policy) if len(rows) else None
            new_ids += mstore.commit_batch(summary.run_id, policy.version, "embedding", version, ids, hits,
                                           hook=hook, replace=options.rescan)
            summary.embedding_scanned += len(ids)
    return new_ids


# ---------------------------------------------------------------------------- NudeNet detector


@dataclass(frozen=True)
class NudeNetJob:
    """One video's due clips, for a NudeNet worker."""

    video_id: int
    path: str
    size_bytes: int
    mtime_ns: int
    clip_ids: tuple[int, ...]
    spans: tuple[ClipSpan, ...]
    k: int
    classes: tuple[str, ...]
    timeout_s: float  # a stall bound (DecodeWatch), not a bound on the whole decode
    heartbeat_s: float | None = None  # stream DecodeHeartbeat items this often while busy


@dataclass(frozen=True)
class NudeNetOutcome:
    video_id: int
    path: str
    clip_ids: np.ndarray  # clips whose every snippet frame was decoded and scored
    scores: np.ndarray  # best score of a configured class over the clip's frames
    classes: tuple[str, ...]  # that class, per clip
    times_s: np.ndarray  # time of that frame
    frames: int
    error: str | None = None
    seconds: float = 0.0


_SCORER = None


def _scorer():
    global _SCORER
    if _SCORER is None:
        from indexer.moderation import NudeNetScorer

        _SCORER = NudeNetScorer(threads=1)
    return _SCORER


def nudenet_video(job: NudeNetJob) -> NudeNetOutcome:
    """Re-decode a video's due clips at their stored snippet times and score them."""
    *_, outcome = nudenet_video_stream(job)
    return outcome


def nudenet_video_stream(job: NudeNetJob) -> Iterator[DecodeHeartbeat | NudeNetOutcome]:
    """nudenet_video as a streaming Ray task: with ``job.heartbeat_s``, DecodeHeartbeat items (one
    at once, then while decoding is busy) that tell the driver the task is alive; last, the outcome."""
    from indexer.decode import iter_snippet_chunks
    from indexer.watch import DecodeHeartbeat, DecodeTimeout
    from indexer.probe import ProbeFailure, iter_probe

    if job.heartbeat_s is not None:
        yield DecodeHeartbeat(0.0)  # started: the driver's silence bound counts from here
    t0 = time.monotonic()
    empty = np.zeros(0, np.int64)

    def failed(reason: str) -> NudeNetOutcome:
        return NudeNetOutcome(job.video_id, job.path, empty, np.zeros(0, np.float32), (), np.zeros(0),
                              0, reason, time.monotonic() - t0)

    try:
        st = os.stat(job.path)
    except OSError as exc:
        yield failed(f"cannot read the file ({exc.strerror}); run 'vidx index' to update the index")
        return
    if st.st_size != job.size_bytes or st.st_mtime_ns != job.mtime_ns:
        yield failed("the file changed since it was indexed; run 'vidx index' first")
        return
    unavailable = nudenet_unavailable()
    if unavailable:
        yield failed(f"NudeNet is not available on this worker: {unavailable}")
        return
    try:
        probe = yield from iter_probe(job.path, job.timeout_s, job.heartbeat_s)
        short = max(2, round(NUDENET_INPUT * min(probe.display_width, probe.display_height)
                             / max(probe.display_width, probe.display_height)))
        wanted = np.array([NUDENET_LABELS.index(c) for c in job.classes], np.int64)
        scorer = _scorer()
        pos = {span: i for i, span in enumerate(job.spans)}
        done_rows, best, best_cls, best_t, frames = [], [], [], [], 0
        for chunk in iter_snippet_chunks(job.path, probe, job.spans, job.k, short, timeout_s=job.timeout_s,
                                         heartbeat_s=job.heartbeat_s):
            if isinstance(chunk, DecodeHeartbeat):
                yield chunk
                continue
            per_frame = scorer.class_max(chunk.frames)[:, wanted]  # (clips * k, classes)
            frames += len(per_frame)
            per_clip = per_frame.reshape(len(chunk.spans), job.k, len(wanted))
            flat = per_clip.reshape(len(chunk.spans), -1)
            arg = flat.argmax(axis=1)
            frame_i, class_i = np.divmod(arg, len(wanted))
            times = np.asarray(chunk.times_s, np.float64)
            done_rows += [pos[s] for s in chunk.spans]
            best.append(flat[np.arange(len(flat)), arg])
            best_cls += [job.classes[c] for c in class_i]
            best_t.append(times[np.arange(len(times)), frame_i])
    except (ProbeFailure, DecodeTimeout) as exc:
        yield failed(f"cannot decode it again: {exc}")
        return
    except Exception as exc:  # a damaged file must not stop the scan
        yield failed(f"NudeNet failed: {type(exc).__name__}: {str(exc)[:200]}")
        return
    ids = np.array([job.clip_ids[r] for r in done_rows], np.int64)
    yield NudeNetOutcome(job.video_id, job.path, ids,
                          np.concatenate(best) if best else np.zeros(0, np.float32), tuple(best_cls),
                          np.concatenate(best_t) if best_t else np.zeros(0), frames, None,
                          time.monotonic() - t0)


def _nudenet_jobs(rows: list[dict], policy: Policy, settings: Settings) -> list[NudeNetJob]:
    from indexer.watch import heartbeat_interval

    by_video: dict[int, list[dict]] = {}
    for r in rows:
        by_video.setdefault(r["video_id"], []).append(r)
    jobs = []
    for video_id, clips in by_video.items():
        first = clips[0]
        k = max(1, int(first["k"] or 1))
        jobs.append(NudeNetJob(
            video_id=video_id, path=first["path"], size_bytes=first["size_bytes"], mtime_ns=first["mtime_ns"],
            clip_ids=tuple(int(c["clip_id"]) for c in clips),
            spans=tuple(ClipSpan(int(c["idx"]), float(c["start_s"]), float(c["end_s"])) for c in clips),
            k=k, classes=policy.nudenet.classes, timeout_s=settings.decode_timeout_s,
            heartbeat_s=heartbeat_interval(settings.decode_timeout_s)))
    return jobs


def _nudenet_pass(mstore: ModerationStore, policy: Policy, model_id: str, version: str, scope: Scope,
                  settings: Settings, options: ScanOptions, summary: ScanSummary, show_progress: bool,
                  hook) -> list[int]:
    import ray

    from pipelines.ray_runtime import ray_session

    rows = mstore.due_clips(model_id, "nudenet", version, scope, options.rescan)
    jobs = deque(_nudenet_jobs(rows, policy, settings))
    cfg = policy.nudenet
    cat_index = [c.key for c in policy.categories].index(cfg.category)
    new_ids: list[int] = []
    pending_outcomes: list[NudeNetOutcome] = []
    last_commit = time.monotonic()

    def commit() -> None:
        nonlocal pending_outcomes, last_commit
        if pending_outcomes:
            ids = np.concatenate([o.clip_ids for o in pending_outcomes])
            scores = np.concatenate([o.scores for o in pending_outcomes]).astype(np.float64)
            classes = [c for o in pending_outcomes for c in o.classes]
            times = np.concatenate([o.times_s for o in pending_outcomes])
            hit = np.nonzero(scores >= cfg.threshold)[0]
            table = None
            if len(hit):
                detail = [json.dumps({"class": classes[i], "time_s": round(float(times[i]), 3)}) for i in hit]
                table = new_flag_table(ids[hit], np.full(len(hit), cat_index), scores[hit], policy,
                                       detail=detail, threshold=cfg.threshold)
            new_ids.extend(mstore.commit_batch(summary.run_id, policy.version, "nudenet", version, ids, table,
                                               hook=hook, replace=options.rescan))
            summary.nudenet_scanned += len(ids)
            summary.nudenet_frames += sum(o.frames for o in pending_outcomes)
            pending_outcomes = []
        last_commit = time.monotonic()
        mstore.store.release_connection()  # searches and 'vidx status' may read the index until the next batch

    bar = None
    if show_progress:
        from tqdm import tqdm
        import sys

        bar = tqdm(total=len(jobs), unit="video", desc="nudenet", file=sys.stderr, mininterval=0.5, disable=None)
    try:
        with ray_session(settings.ray_address) as resources:
            slots = max(1, int(resources.get("CPU", os.cpu_count() or 1)))
            task = ray.remote(nudenet_video_stream).options(num_cpus=1, max_retries=1, num_returns="streaming")
            # One task per CPU, so a task runs as soon as it is submitted: its silence bound (no
            # heartbeat, no outcome for decode_timeout_s + 60 s: a decode hung inside libav) counts
            # from there. A slow file is not hung: its heartbeats keep coming.
            in_flight: dict = {}  # streaming generator -> [job, when last heard from]

            def finish(gen, job: NudeNetJob, outcome: NudeNetOutcome) -> None:
                in_flight.pop(gen)
                _note_outcome(outcome, job, summary)
                if len(outcome.clip_ids):
                    pending_outcomes.append(outcome)
                if bar is not None:
                    bar.update(1)

            while jobs or in_flight:
                while jobs and len(in_flight) < slots:
                    job = jobs.popleft()
                    in_flight[task.remote(job)] = [job, time.monotonic()]
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                for gen in ready:
                    job = in_flight[gen][0]
                    try:
                        item = ray.get(next(gen))
                    except StopIteration:
                        item = NudeNetOutcome(job.video_id, job.path, np.zeros(0, np.int64), np.zeros(0, np.float32),
                                              (), np.zeros(0), 0, "worker ended without a result")
                    except Exception as exc:  # the worker died (a crash in a decoder)
                        item = NudeNetOutcome(job.video_id, job.path, np.zeros(0, np.int64), np.zeros(0, np.float32),
                                              (), np.zeros(0), 0, f"worker failed: {type(exc).__name__}")
                    if isinstance(item, NudeNetOutcome):
                        finish(gen, job, item)
                    else:
                        in_flight[gen][1] = time.monotonic()  # a heartbeat
                now = time.monotonic()
                for gen, (job, heard) in list(in_flight.items()):  # a decode hung inside libav
                    if now - heard > job.timeout_s + 60:
                        if ray.wait([gen], timeout=0)[0]:
                            in_flight[gen][1] = now  # it did speak, while the driver was busy committing
                            continue
                        ray.cancel(gen, force=True)
                        in_flight.pop(gen)
                        summary.errors.append({"path": job.path, "clips": len(job.clip_ids),
                                               "reason": f"decoding hung (no progress for {now - heard:.0f} s) "
                                                         f"and was stopped"})
                if sum(len(o.clip_ids) for o in pending_outcomes) >= options.batch_clips or \
                        now - last_commit >= options.nudenet_commit_s:
                    commit()
    finally:
        if bar is not None:
            bar.close()
    commit()
    return new_ids


def _note_outcome(outcome: NudeNetOutcome, job: NudeNetJob, summary: ScanSummary) -> None:
    missed = len(job.clip_ids) - len(outcome.clip_ids)
    if outcome.error:
        summary.errors.append({"path": job.path, "clips": len(job.clip_ids), "reason": outcome.error})
        log.warning("NudeNet: %s: %s (its %d clip(s) stay due)", job.path, outcome.error, len(job.clip_ids))
    elif missed:
        summary.errors.append({"path": job.path, "clips": missed,
                               "reason": "some clips could not be decoded again (damaged stream)"})
