"""``vidx index`` as a Ray job: decode on CPU workers, embed on an actor pool, commit in batches.

Flow: discover -> plan (incremental diff) -> apply renames/deletes -> [nothing
to do: stop here, no model, no Ray] -> resolve weights (fail fast) -> Ray:
decode tasks stream (header, frames) pairs, frames go straight from the decode
worker to a model actor through the object store, the driver only sees small
headers and vectors -> finished videos are committed to DuckDB in one
transaction per batch, FAISS is updated in memory and flushed atomically.

Backpressure: at most ``decode_slots`` files decode at once, each decode
stream pauses after a few unread chunks, chunks wait in the driver (bounded in
frames) while each model actor has two calls in flight, and the waiting chunks
go together as the actor's next call (short files make tiny chunks); memory
stays flat whatever the archive size. A decode that runs past
its time bound is cancelled (the worker is killed) and recorded as failed.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from indexer import ann
from indexer import vectors as vec
from indexer.config import Settings
from indexer.discover import discover_files, resolve_root
from indexer.incremental import WorkPlan, plan_work
from indexer.model import LoadedModel, ModelSpec, ModelUnavailable, resolve_model, warn_if_random
from indexer.store import IndexParams, IndexStore
from indexer.tagging import label_cache_dir
from indexer.types import VideoResult, VideoStatus
from indexer.watch import DecodeHeartbeat
from indexer.work import ChunkHeader, DecodeOutcome, VideoAssembler, VideoJob, decode_video, embed_chunks, make_video_jobs
from pipelines.progress import Progress
from pipelines.ray_runtime import ray_session

log = logging.getLogger(__name__)

_CHUNK_FRAMES = 48  # frames per decode chunk: a few model batches, ~7 MB at 224 px
# Model calls in flight per actor: one running and one queued behind it, so the actor never
# waits for the driver. Chunks that come while both are taken wait in the driver and go
# together as the next call, up to _CHUNK_FRAMES frames: a short file makes one small chunk
# (a 2 s file: 2 frames), and ViT-B-32 costs 16.1 ms a frame in batches of 2 against 13.5 in
# batches of 32 (bfloat16, 2 cores; bench/model_batch_sizes.py).
_ACTOR_CALLS = 2
# Frames waiting in the driver, in full chunks, before decode streams are held back. While the
# actors still load the model (seconds) decoding runs further ahead instead of stalling
# (~13 MB a chunk at 224x398). Counted in frames: a count of chunks let the decoders run only
# a few short files ahead.
_PENDING_CHUNKS = 2
_PENDING_CHUNKS_LOADING = 12
_DECODE_GRACE_S = 30.0  # beyond the in-task bound before the driver kills the worker
_LOST_RETRIES = 2  # fresh starts of a file whose decode or frames were lost with a worker or node
_ACTOR_REPLACEMENTS = 3  # new model actors per run once one died for good (restarts used up)


@dataclass
class IndexSummary:
    """What a run did; printed by the CLI and stored in ``runs.stats``."""

    index_dir: str
    run_id: int = 0
    status: str = "ok"
    discovered: int = 0
    indexed: int = 0
    unchanged: int = 0
    renamed: int = 0
    copied: int = 0
    touched: int = 0
    deleted: int = 0
    failed: int = 0
    skipped: int = 0
    failed_before: int = 0  # unchanged files that failed in an earlier run (not retried)
    resumed: int = 0  # videos finished from the clips an interrupted run had saved
    clips_resumed: int = 0  # clips of those videos not embedded again
    reader_wait_s: float = 0.0  # time the run waited for searches/'vidx status' to close the index
    clips_added: int = 0
    frames_embedded: int = 0
    video_seconds: float = 0.0
    wall_s: float = 0.0
    model_id: str | None = None
    workers: dict = field(default_factory=dict)  # worker -> videos decoded
    failures: list = field(default_factory=list)  # {path, status, reason}
    notes: list = field(default_factory=list)

    @property
    def times_realtime(self) -> float:
        return self.video_seconds / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["times_realtime"] = round(self.times_realtime, 2)
        d["video_hours"] = round(self.video_seconds / 3600, 4)
        return d


class ModelActor:
    """Holds one loaded model; Ray makes one of these per embed worker."""

    def __init__(self, spec: ModelSpec, device: str, threads: int, batch_size: int, precision: str = "auto"):
        # As ray_session sets for an embedded cluster (OpenMP reads it when torch loads): on a
        # joined cluster's nodes too, unless the worker already imported torch or the user set it.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.model = LoadedModel(spec, device=device, threads=threads, precision=precision)
        self.batch_size = batch_size

    def info(self) -> dict:
        return {"dim": self.model.dim, "image_size": self.model.image_size,
                "logit_scale": self.model.logit_scale, "precision": self.model.precision}

    def embed_many(self, headers: list[ChunkHeader], *frames: np.ndarray):
        """One EmbeddedChunk per header; the frames (Ray passes each array from the object
        store) of every chunk run in shared batches."""
        return embed_chunks(self.model, list(headers), list(frames), self.batch_size)

    def label_bank(self, vocabularies, cache_dir: str):
        """Text vectors of the tag vocabularies (cached per model under ``cache_dir``)."""
        from indexer.tagging import LabelBank

        return LabelBank.build(self.model, vocabularies, cache_dir=cache_dir)


def _decode_stream(job: VideoJob):
    yield from decode_video(job)


def _apply_plan_without_decoding(store: IndexStore, plan: WorkPlan, summary: IndexSummary) -> list[int]:
    """Deletes, renames, copies and touches; returns clip ids removed from FAISS."""
    removed = store.delete_videos(s.video_id for s in plan.deleted)
    store.update_location([(vid, f) for vid, f, _ in plan.renamed] + plan.touched)
    summary.deleted += len(plan.deleted)
    summary.renamed += len(plan.renamed)
    summary.touched += len(plan.touched)
    return removed


def index_paths(paths: list[str], settings: Settings, retry_failed: bool = False, reset: bool = False,
                show_progress: bool = True) -> IndexSummary:
    """Index ``paths`` into ``settings.index_dir``; the library entry point behind ``vidx index``."""
    t_start = time.monotonic()
    summary = IndexSummary(index_dir=settings.index_dir)
    roots = [resolve_root(p) for p in paths]  # as on disk, also when typed in another spelling
    files = list(discover_files(roots, include_hidden=settings.include_hidden))
    summary.discovered = len(files)

    with IndexStore(settings.index_dir) as store:
        if reset:
            store.reset()
        model_id_before = store.index_model()
        run_id = store.start_run("index", {"paths": roots, "settings": asdict(settings)})
        summary.run_id = run_id
        status = "ok"
        try:
            status = _run(store, files, roots, settings, summary, retry_failed, show_progress)
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except BaseException:
            status = "error"
            raise
        finally:
            summary.status = status
            summary.wall_s = time.monotonic() - t_start
            summary.reader_wait_s = round(store.reader_wait_s, 3)
            summary.model_id = store.index_model() or model_id_before
            store.finish_run(run_id, status, summary.as_dict())
    return summary


def _run(store: IndexStore, files, roots, settings: Settings, summary: IndexSummary,
         retry_failed: bool, show_progress: bool) -> str:
    # Which model will this run use? Stored videos are "unchanged" only if made by it. Resolving
    # means importing torch/open_clip (seconds): skip it when the index answers the question, and
    # on a fresh index overlap it with Ray's start-up.
    wanted_model = store.index_model()
    spec: ModelSpec | None = None
    if wanted_model is not None and _model_may_differ(wanted_model, settings):
        spec = resolve_model(settings.model, settings.pretrained)
        store.check_model(spec.model_id)
        wanted_model = spec.model_id
    params = IndexParams(wanted_model or "", settings.clip_s, settings.snippets, settings.clip_recipe)
    plan = plan_work(files, store.stored_videos(), store.video_params(), params, roots, retry_failed)
    log.info("plan: %d to index, %d unchanged, %d renamed, %d copies, %d deleted", len(plan.to_index),
             len(plan.unchanged), len(plan.renamed), len(plan.copies), len(plan.deleted))
    summary.unchanged += len(plan.unchanged)
    summary.failed_before += sum(1 for s in plan.unchanged if s.status == "failed")
    for f, reason in plan.unreadable:  # reported, not stored (unreadable, or a name DuckDB cannot hold)
        summary.failures.append({"path": f.path, "status": "failed", "reason": reason})
    summary.failed += len(plan.unreadable)
    store.prune_partial(roots, (f.path for f in files))  # saved parts of files deleted or moved

    if plan.to_index and spec is None:
        # Weights must be there before anything starts: fail in seconds, not after Ray is up.
        spec = resolve_model(settings.model, settings.pretrained)
        store.check_model(spec.model_id)
    # FAISS is loaded (and verified against DuckDB) before DuckDB changes, so the changes
    # below are applied to it exactly once.
    changes = bool(plan.deleted or plan.copies or plan.to_index)
    faiss_index = store.load_faiss() if changes else None
    added_ids: list[np.ndarray] = []
    if plan.copies:  # before deletes: a swap copies from rows it then deletes
        ids = store.copy_videos(plan.copies)
        summary.copied += len(plan.copies)
        if ids:
            added_ids.append(np.array(ids, np.int64))
    removed = _apply_plan_without_decoding(store, plan, summary)
    if faiss_index is not None:
        faiss_index = _remove_ids(faiss_index, removed)
        faiss_index = _add_ids_from_store(store, faiss_index, added_ids)
    elif added_ids:
        faiss_index = store.build_faiss()

    if plan.to_index:
        if settings.executor == "local":  # the same stages in this process, no Ray (pipelines/local.py)
            from pipelines.local import index_with_local

            status = index_with_local(store, plan, spec, settings, summary, faiss_index, show_progress)
        else:
            status = _index_with_ray(store, plan, spec, settings, summary, faiss_index, show_progress)
        if status == "ok" and plan.duplicates:
            # Files with the same content as one indexed just now: a second plan finds that one
            # and copies its rows and vectors (no decode). No roots: this pass deletes nothing.
            return _run(store, plan.duplicates, [], settings, summary, retry_failed, show_progress)
        return status

    # Nothing to decode: keep FAISS in step with the renames/deletes/copies, or verify it.
    if changes and faiss_index is not None:
        store.save_faiss(ann.maybe_rebuild(store, faiss_index, settings))
    elif not changes:
        store.load_faiss()  # cheap checksum check; rebuilds only when out of step with DuckDB
    return "ok"


def _model_may_differ(index_model: str, settings: Settings) -> bool:
    """True unless the configured model is obviously the one the index holds (no load needed)."""
    name, _, weights = index_model.partition("|")
    if name != settings.model:
        return True
    if weights.startswith("random:"):
        return settings.pretrained != "random"
    if weights.startswith("file:") or name == "local-dir":
        return True  # a file's identity needs its digest: cheap, done by resolve_model
    return weights != settings.pretrained


def _remove_ids(index, ids):
    if index is not None and len(ids):
        vec.remove_vectors(index, ids)
    return index


def _add_ids_from_store(store: IndexStore, index, id_arrays: list[np.ndarray]):
    if not id_arrays:
        return index
    wanted = np.concatenate(id_arrays)
    if index is None:
        return store.build_faiss()
    for ids, mat in store.load_vectors():
        mask = np.isin(ids, wanted)
        if mask.any():
            vec.add_vectors(index, mat[mask], ids[mask])
    return index


def _index_with_ray(store: IndexStore, plan: WorkPlan, spec: ModelSpec, settings: Settings,
                    summary: IndexSummary, faiss_index, show_progress: bool) -> str:
    import ray

    total_cpus = os.cpu_count() or 1
    log.info("starting Ray (%s)", settings.ray_address or "embedded")
    with ray_session(settings.ray_address, num_cpus=None) as resources:
        log.info("Ray up: %s", {k: v for k, v in resources.items() if k in ("CPU", "GPU")})
        warn_if_random(spec)
        params = IndexParams(spec.model_id, settings.clip_s, settings.snippets, settings.clip_recipe)
        cluster_cpus = int(resources.get("CPU", total_cpus))
        gpus = int(resources.get("GPU", 0))
        use_gpu = gpus > 0 and settings.device in ("auto", "cuda")
        n_actors = settings.embed_workers
        threads = settings.torch_threads or max(1, (cluster_cpus if not settings.ray_address else total_cpus)
                                                // n_actors)
        actor_cls = ray.remote(ModelActor).options(
            num_cpus=1, num_gpus=(1 if use_gpu else 0), max_restarts=2, max_task_retries=2)
        def make_actor():
            return actor_cls.remote(spec, "cuda" if use_gpu else "cpu", threads, settings.batch_size,
                                    settings.precision)

        actors = [make_actor() for _ in range(n_actors)]
        # Decoding starts now, while the actors load the model; the model's details (and any
        # failure to load it, which is systemic) are collected before the first commit.
        bank_ref = None
        if settings.tags:
            bank_ref = actors[0].label_bank.remote(_vocabularies(store, settings), label_cache_dir())
        model_ready = _ModelReady(store, spec, actors[0].info.remote(), faiss_index, bank_ref)
        decode_slots = settings.decode_workers or max(1, cluster_cpus - n_actors)
        decode_fn = ray.remote(_decode_stream).options(
            num_cpus=1, max_retries=1, num_returns="streaming", _generator_backpressure_num_objects=4)
        return _drive(store, plan, params, settings, summary, model_ready, actors, decode_fn,
                      decode_slots, spec.image_size, show_progress, make_actor)


class _ModelReady:
    """Registers the model in the index once the first actor has loaded it."""

    def __init__(self, store: IndexStore, spec: ModelSpec, info_ref, faiss_index, bank_ref=None):
        self.store, self.spec, self.info_ref, self.faiss_index = store, spec, info_ref, faiss_index
        self.bank_ref, self.bank = bank_ref, None
        self.done = False

    def check(self, block: bool = False) -> bool:
        import ray

        if self.done:
            return True
        if not block and not ray.wait([self.info_ref], timeout=0)[0]:
            return False
        try:
            info = ray.get(self.info_ref)
        except ray.exceptions.RayError as exc:
            raise ModelUnavailable(f"the model worker could not load {self.spec.name} "
                                   f"({self.spec.pretrained}): {_short(exc)}") from None
        self.store.register_model(self.spec.model_id, self.spec.name, self.spec.pretrained, info["dim"],
                                  info["image_size"], info["logit_scale"])
        log.info("%s loaded; its image tower runs in %s", self.spec.name, info["precision"])
        if self.faiss_index is None:
            self.faiss_index = vec.new_flat_index(info["dim"])
        if self.bank_ref is not None:
            try:
                self.bank = ray.get(self.bank_ref)
            except ray.exceptions.RayError as exc:
                raise ModelUnavailable(f"encoding the tag vocabularies failed: {_short(exc)}") from None
        self.done = True
        log.info("model %s loaded in the model actors", self.spec.model_id)
        return True


def _drive(store, plan, params, settings, summary, model_ready: _ModelReady, actors, decode_fn,
           decode_slots, image_size, show_progress, make_actor=None) -> str:
    import ray
    from ray.exceptions import ActorDiedError, ObjectLostError, OwnerDiedError, RayActorError, WorkerCrashedError

    resume = load_resume(store, plan, params)
    jobs = deque(make_video_jobs(plan.to_index, settings, image_size, _CHUNK_FRAMES, resume))
    progress = Progress(len(jobs), sum(_expected_seconds(f) for f, _ in plan.to_index), enabled=show_progress)
    streams: dict = {}  # generator -> VideoAssembler
    waiting_frames: dict = {}  # generator -> ChunkHeader whose frames are the stream's next item
    heard: dict = {}  # generator -> when it last showed progress (an item, or being held back by us)
    embeds: dict = {}  # ObjectRef -> ([(VideoAssembler, header, frames ref)], actor index, actor)
    actor_calls = [0] * len(actors)  # model calls in flight per actor
    pending: deque = deque()  # (VideoAssembler, header, frames ref): chunks not sent to an actor yet
    pending_frames = 0
    live: list[VideoAssembler] = []  # every video started and not yet committed
    done: list[VideoResult] = []
    last_commit = last_flush = time.monotonic()
    status = "ok"
    restarts: dict[str, int] = {}  # path -> fresh starts after its work was lost
    replaced = 0  # model actors replaced in this run

    def drop_stream(gen) -> None:
        streams.pop(gen)
        heard.pop(gen, None)
        waiting_frames.pop(gen, None)

    def is_live(asm) -> bool:
        return any(a is asm for a in live)

    def queue_embed(asm, header, frames_ref, front: bool = False) -> None:
        nonlocal pending_frames
        (pending.appendleft if front else pending.append)((asm, header, frames_ref))
        pending_frames += _frames_of(header)

    def dispatch() -> None:
        """Send waiting chunks to actors with a free call slot, small ones several to a call."""
        nonlocal pending_frames
        while pending:
            ai = min(range(len(actors)), key=actor_calls.__getitem__)
            if actor_calls[ai] >= _ACTOR_CALLS:
                return
            bundle = []
            for asm, header, frames_ref in take_bundle(pending, _CHUNK_FRAMES):
                pending_frames -= _frames_of(header)
                if is_live(asm):
                    bundle.append((asm, header, frames_ref))
                else:
                    asm.pending -= 1  # a chunk of an abandoned attempt: not worth the model's time
            if bundle:
                ref = actors[ai].embed_many.remote([h for _, h, _ in bundle], *[f for _, _, f in bundle])
                embeds[ref] = (bundle, ai, actors[ai])
                actor_calls[ai] += 1

    def restart(asm, exc) -> bool:
        """Work of a file was lost with a worker or node (not the file's fault): start it again."""
        path = asm.job.file.path
        if restarts.get(path, 0) >= _LOST_RETRIES:
            return False
        restarts[path] = restarts.get(path, 0) + 1
        for gen in [g for g, a in streams.items() if a is asm]:
            ray.cancel(gen, force=True)
            drop_stream(gen)
        live[:] = [a for a in live if a is not asm]  # its chunks still in flight are ignored
        saved = asm.saved_part()  # the fresh start skips what is saved by now, not only what was at first
        resume[path] = saved
        jobs.appendleft(replace(asm.job, skip_clips=len(saved)))
        log.warning("%s: work lost with a Ray worker or node (%s); starting the file again", path, _short(exc))
        return True

    def commit(force_flush: bool = False) -> None:
        # A commit is never cut by Ctrl-C/SIGTERM: DuckDB turns SIGINT during a query into
        # RuntimeError("Query interrupted"); the signal is raised as KeyboardInterrupt after it.
        from pipelines.local import interrupts_deferred

        with interrupts_deferred():
            _commit(force_flush)

    def _commit(force_flush: bool) -> None:
        nonlocal last_commit, last_flush, done
        # Only results with clips need the model (registered, its tag bank). Failed and skipped
        # files are committed without waiting for it: while the driver waits it reads no decode
        # stream, and a Ctrl-C during the model's load would wait for the load to finish.
        ready = model_ready.check(block=any(r.clips for r in done))
        if done:
            commit_batch(store, done, params, summary, model_ready.faiss_index, model_ready.bank)
            done = []
        last_commit = time.monotonic()
        if ready and (force_flush or time.monotonic() - last_flush > settings.faiss_flush_s):
            model_ready.faiss_index = flush_faiss(store, model_ready.faiss_index, settings)
            last_flush = time.monotonic()
        store.release_connection()  # searches and 'vidx status' may read the index until the next batch

    store.release_connection()  # the plan is applied; readers are welcome while videos decode
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while jobs or live:
            while jobs and len(streams) < decode_slots:
                job = jobs.popleft()
                gen = decode_fn.remote(job)
                streams[gen] = VideoAssembler(job, resumed=resume.get(job.file.path, ()))
                heard[gen] = time.monotonic()
                live.append(streams[gen])
            dispatch()
            ahead = _PENDING_CHUNKS if model_ready.check() else _PENDING_CHUNKS_LOADING
            held = pending_frames >= ahead * _CHUNK_FRAMES
            # A stream whose next item is frames waits while enough frames wait for the model.
            waitable = [g for g in streams if not (held and g in waiting_frames)] + list(embeds)
            held_at = time.monotonic()
            for g in streams:
                if held and g in waiting_frames:
                    heard[g] = held_at  # paused by us (Ray's backpressure stops it soon): not its stall
            ready, _ = ray.wait(waitable, num_returns=1, timeout=1.0) if waitable else ([], [])
            for ref in ready:
                if ref in embeds:
                    bundle, ai, actor = embeds.pop(ref)
                    actor_calls[ai] -= 1
                    try:
                        chunks = ray.get(ref)
                    except RayActorError as exc:
                        # The model actor died for good (its restarts are used up: OOM kills, lost
                        # nodes). Not the files' fault: replace the actor, embed the chunks again.
                        model_ready.check(block=True)  # a model that never loaded is systemic
                        if actors[ai] is actor and isinstance(exc, ActorDiedError):
                            if make_actor is None or replaced >= _ACTOR_REPLACEMENTS:
                                raise ModelUnavailable(
                                    f"the model worker kept dying ({_short(exc)}); finished videos are "
                                    f"saved: run the same command again to continue") from None
                            replaced += 1
                            actors[ai] = make_actor()
                            log.warning("model actor %d died (%s); replaced it", ai, _short(exc))
                        for asm, header, frames_ref in reversed(bundle):  # first again, in their order
                            if is_live(asm):
                                queue_embed(asm, header, frames_ref, front=True)
                            else:
                                asm.pending -= 1
                        continue
                    except Exception as exc:
                        model_ready.check(block=True)  # a model that never loaded is systemic
                        # Frames went with a node and could not be rebuilt, or the decode worker
                        # that was making them died (the call then fails with the decode task's
                        # WorkerCrashedError): not the files' fault either way.
                        lost = (ObjectLostError, OwnerDiedError, WorkerCrashedError)
                        for asm, _, _ in bundle:
                            asm.pending -= 1
                        for asm in _distinct_videos(bundle):
                            if not is_live(asm):
                                continue  # a chunk of an abandoned attempt
                            if isinstance(exc, lost) and restart(asm, exc):
                                continue
                            asm.fail(f"embedding failed: {_short(exc)}")
                        continue
                    for (asm, _, _), chunk in zip(bundle, chunks):
                        asm.pending -= 1
                        asm.chunks.append(chunk)
                    for asm in _distinct_videos(bundle):
                        if is_live(asm):
                            save_due_partial(store, asm, params, settings)
                    continue
                asm = streams[ref]
                try:
                    item_ref = next(ref)
                except StopIteration:
                    drop_stream(ref)
                    if asm.outcome is None:
                        asm.fail("decode worker ended without a result")
                    continue
                if ref in waiting_frames:
                    queue_embed(asm, waiting_frames.pop(ref), item_ref)
                    asm.pending += 1
                    continue
                try:
                    item = ray.get(item_ref)
                except Exception as exc:  # worker died twice (a decoder segfault, OOM kill, lost node)
                    if restart(asm, exc):
                        continue
                    asm.fail(f"decoder crashed on this file ({_LOST_RETRIES + 1} times): {_short(exc)}")
                    ray.cancel(ref, force=True)
                    drop_stream(ref)
                    continue
                heard[ref] = time.monotonic()
                if isinstance(item, ChunkHeader):
                    waiting_frames[ref] = item
                    progress.note_position(asm.job.file.path, item.spans[-1].end_s)
                elif isinstance(item, DecodeHeartbeat):
                    progress.note_position(asm.job.file.path, item.position_s)
                elif isinstance(item, DecodeOutcome):
                    asm.outcome = item
            # A decode that shows no progress (no chunk, no heartbeat) for the stall bound plus a
            # grace is stuck where it cannot stop itself (a libav call that never returns): killed.
            # Slow is not stuck: a file that decodes slower than real time keeps sending heartbeats.
            now = time.monotonic()
            limit = settings.decode_timeout_s + _DECODE_GRACE_S
            for gen, asm in list(streams.items()):
                silent_s = now - heard[gen]
                if asm.outcome is None and silent_s > limit:
                    if ray.wait([gen], timeout=0)[0]:
                        heard[gen] = now  # it did speak, while the driver was busy (a long commit)
                        continue
                    ray.cancel(gen, force=True)
                    drop_stream(gen)
                    asm.fail(f"decoding hung (no progress for {silent_s:.0f} s) and was stopped; the file is "
                             f"probably damaged (raise decode_timeout_s to allow more)")
            # Collect completed videos (outcome in and every chunk embedded).
            for asm in [a for a in live if a.complete]:
                live.remove(asm)
                for gen in [g for g, a in streams.items() if a is asm]:
                    drop_stream(gen)
                result = asm.result()
                done.append(result)
                progress.advance(result)
            if done and (time.monotonic() - last_commit > settings.commit_every_s
                         or not (jobs or live)):
                commit()
    except KeyboardInterrupt:
        status = "interrupted"
        for gen in list(streams):
            ray.cancel(gen, force=True)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if status == "interrupted":
            for asm in live:  # the embedded clips of videos in flight are kept too
                save_due_partial(store, asm, params, settings, force=True)
        commit(force_flush=True)
        progress.close()
    return status


def commit_batch(store: IndexStore, done: list[VideoResult], params: IndexParams, summary: IndexSummary,
                 faiss_index, bank) -> None:
    """Finished videos -> one DuckDB transaction (rows, vectors, tags); then the same change to FAISS."""
    ids, mats, removed = store.commit_results(done, params, summary.run_id, after_insert=_tagger(bank))
    if len(removed):
        vec.remove_vectors(faiss_index, removed)
    if len(ids):
        vec.add_vectors(faiss_index, mats, ids)
    for r in done:
        _count(summary, r)


def load_resume(store: IndexStore, plan: WorkPlan, params: IndexParams) -> dict:
    """path -> clips saved by an earlier run that stopped part way through the file, for the
    files this run indexes (same content, same recipe); their jobs skip those clips."""
    resume = store.load_partial([(f.path, fp) for f, fp in plan.to_index], params.recipe)
    if resume:
        log.info("%d videos resume after %d clips saved by an earlier run", len(resume),
                 sum(len(c) for c in resume.values()))
    return resume


def save_due_partial(store: IndexStore, asm: VideoAssembler, params: IndexParams, settings: Settings,
                     force: bool = False) -> None:
    """Save a video's newly finished clips when ``checkpoint_s`` has passed, or now with
    ``force`` (a run that stops keeps what it embedded); one transaction."""
    clips = asm.due_partial(settings.checkpoint_s, force=force)
    if clips:
        from pipelines.local import interrupts_deferred

        with interrupts_deferred():
            store.save_partial(asm.job.file.path, asm.job.fingerprint, params.recipe, clips)
            store.release_connection()


def flush_faiss(store: IndexStore, faiss_index, settings: Settings):
    """Write the FAISS file: exact below the size threshold, IVF above it (rebuilt when crossing)."""
    faiss_index = ann.maybe_rebuild(store, faiss_index, settings)
    store.save_faiss(faiss_index)
    return faiss_index


def _vocabularies(store: IndexStore, settings: Settings):
    from indexer.tagging import load_vocabularies, stored_vocabularies

    from indexer.tagging import remember_vocabulary

    files = [p for p in settings.labels.split(os.pathsep) if p]
    vocabs = load_vocabularies(label_files=files)
    with store.transaction():  # later runs (and `vidx tags`) keep applying custom vocabularies
        for vocab in vocabs[len(vocabs) - len(files):]:
            remember_vocabulary(store.con, vocab)
    seen = {v.name for v in vocabs}
    return vocabs + [v for v in stored_vocabularies(store.con) if v.name not in seen]


def _tagger(bank):
    if bank is None:
        return None

    def tag(con, video_ids: list[int]) -> None:
        from indexer.tagging import tag_clips, tag_shots_and_videos

        tag_clips(con, bank, video_ids)
        tag_shots_and_videos(con, bank, video_ids)
    return tag


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _frames_of(header: ChunkHeader) -> int:
    return sum(len(times) for times in header.times_s)


def _distinct_videos(bundle: list) -> list[VideoAssembler]:
    """The videos of a model call's (video, header, frames) items, each once, in order."""
    return list({id(asm): asm for asm, _, _ in bundle}.values())


def take_bundle(pending: deque, max_frames: int) -> list:
    """The chunks of the next model call, taken from the front of ``pending`` ((video,
    ChunkHeader, frames) items, in arrival order): the first one, then those after it while
    the call stays within ``max_frames`` frames. A chunk larger than that goes alone."""
    bundle, n = [], 0
    while pending and (not bundle or n + _frames_of(pending[0][1]) <= max_frames):
        item = pending.popleft()
        bundle.append(item)
        n += _frames_of(item[1])
    return bundle


def _expected_seconds(f) -> float:
    # Before probing, size is the only hint of duration; the bar corrects itself as probes arrive.
    return max(f.size_bytes / 250_000, 1.0)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]


def _count(summary: IndexSummary, r: VideoResult) -> None:
    if r.status == VideoStatus.INDEXED:
        summary.indexed += 1
        summary.clips_added += len(r.clips)
        if r.clips_resumed:
            summary.resumed += 1
            summary.clips_resumed += r.clips_resumed
        summary.frames_embedded += r.frames_embedded
        summary.video_seconds += r.probe.duration_s if r.probe else 0.0
    else:
        if r.status == VideoStatus.FAILED:
            summary.failed += 1
        else:
            summary.skipped += 1
        summary.failures.append({"path": r.file.path, "status": r.status.value, "reason": r.error})
    if r.worker:
        summary.workers[r.worker] = summary.workers.get(r.worker, 0) + 1


def peak_rss_bytes() -> int:
    """Peak resident memory of this process and its finished children."""
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return usage * 1024 if sys.platform != "darwin" else usage
