"""``vidx index`` without Ray: the same stages in one process (``--executor local``).

What runs: ``indexer.work.decode_video`` in ONE decode thread feeding a bounded queue,
``indexer.work.embed_chunk`` with ONE ``LoadedModel`` (torch threads = every CPU, or
``torch_threads``) in the calling thread, ``VideoAssembler`` to join a video's chunks and
outcome, and ``store.commit_results`` with the same commit cadence (``commit_every_s``),
tagging hook, model registration and FAISS handling (in memory, flushed every
``faiss_flush_s`` and at the end) as the Ray driver (``pipelines.index._drive``). PyAV and
torch release the GIL, so decoding the next chunk overlaps the forward pass of this one.

Memory is bounded like the Ray path: the queue holds at most ``_QUEUE_ITEMS`` items (a
header or a frame array of ``_CHUNK_FRAMES`` frames), and a video keeps only its clip
vectors until it is committed.

What it does NOT give you (why Ray stays the default): one machine only; a decoder that
crashes the process (a segfault inside libav) takes the run down with it (``kill -9``
semantics: committed videos are kept and the re-run resumes); a decode that hangs inside
libav past its bound cannot be killed: it is abandoned (its thread is left to itself, the
file recorded as failed) and a fresh decode thread goes on with the next file.

Uses: the Ray-overhead benchmark (``bench/ray_overhead.py``), small machines and
debugging (``pdb`` and profilers see everything in one process).

``python -m pipelines.local index PATH... [vidx index options]`` runs ``vidx index`` with
this executor (for benchmarks, before the ``--executor`` option exists).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from indexer import vectors as vec
from indexer.config import Settings
from indexer.incremental import WorkPlan
from indexer.model import LoadedModel, ModelSpec, resolve_model, warn_if_random
from indexer.store import IndexParams, IndexStore
from indexer.types import VideoResult
from indexer.watch import DecodeHeartbeat
from indexer.work import ChunkHeader, DecodeOutcome, VideoAssembler, VideoJob, decode_video, embed_chunk, make_video_jobs
from pipelines.progress import Progress

log = logging.getLogger(__name__)

_QUEUE_ITEMS = 6  # headers + frame arrays buffered between the decode thread and the model (3 chunks)
_POLL_S = 0.5  # how often the model thread looks at the clock while waiting for the decoder
# How long closing the feed waits for the decode thread to stop. Python's shutdown ends a daemon
# thread that is still in native code with pthread_exit when it next asks for the GIL, and inside
# C++ that swallows the unwind (OpenCV's bindings, used by shot detection) the process aborts
# ("FATAL: exception not rethrown", exit -6) instead of exiting 130 after Ctrl-C. So the thread is
# waited for; it stops at its next chunk.
_JOIN_S = 30.0


@dataclasses.dataclass
class _Item:
    seq: int  # job number; items of an abandoned decode thread are recognised by it
    gen: int  # decode thread generation
    payload: object  # ChunkHeader | np.ndarray | DecodeOutcome | _Started | _End


@dataclasses.dataclass
class _Started:
    at: float


class _End:
    pass


class _DecodeThread:
    """Decodes jobs[start:] one after the other into ``out``; can be abandoned if it hangs."""

    def __init__(self, jobs: list[VideoJob], start: int, out: queue.Queue, gen: int):
        self.jobs, self.start, self.out, self.gen = jobs, start, out, gen
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"vidx-decode-{gen}", daemon=True)
        self.thread.start()

    def _put(self, item: _Item) -> bool:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for seq in range(self.start, len(self.jobs)):
                if not self._put(_Item(seq, self.gen, _Started(time.monotonic()))):
                    return
                for payload in decode_video(self.jobs[seq]):  # never raises for bad input
                    if not self._put(_Item(seq, self.gen, payload)):
                        return
        except BaseException as exc:  # a bug, not bad input: hand it to the model thread
            self._put(_Item(-1, self.gen, exc))
            return
        self._put(_Item(len(self.jobs), self.gen, _End()))


class _DecodeFeed:
    """(job number, payload) in job order from a decode thread that starts at once.

    A decode that shows no progress (no chunk, no heartbeat) for the Ray driver's bound
    (``decode_timeout_s + grace``) yields ``(job number, ("hung", seconds))`` and decoding goes
    on with the next file in a fresh thread.
    """

    def __init__(self, jobs: list[VideoJob], settings: Settings):
        from pipelines.index import _DECODE_GRACE_S

        self.jobs = jobs
        self.limit_s = settings.decode_timeout_s + _DECODE_GRACE_S
        self.gen = 0
        self.q: queue.Queue = queue.Queue(maxsize=_QUEUE_ITEMS)
        self.worker = _DecodeThread(jobs, 0, self.q, self.gen)

    def close(self) -> None:
        self.worker.stop.set()
        if self.worker.thread is not threading.current_thread():
            self.worker.thread.join(_JOIN_S)

    def __iter__(self) -> Iterator[tuple[int, object]]:
        # An empty queue after the consumer's own work means the thread put nothing all that
        # time (a live one sends a heartbeat every few seconds, or blocks on a full queue).
        current, heard = -1, time.monotonic()
        try:
            while True:
                try:
                    item = self.q.get(timeout=_POLL_S)
                except queue.Empty:
                    item = None
                if item is None or item.gen != self.gen:
                    now = time.monotonic()
                    if current >= 0 and now - heard > self.limit_s:
                        # Abandon the hung thread (a thread cannot be killed); go on with the next file.
                        self.worker.stop.set()
                        yield current, ("hung", now - heard)
                        self.gen += 1
                        self.q = queue.Queue(maxsize=_QUEUE_ITEMS)  # the old thread may still put into the old one
                        self.worker = _DecodeThread(self.jobs, current + 1, self.q, self.gen)
                        current, heard = -1, time.monotonic()
                    continue
                heard = time.monotonic()
                payload = item.payload
                if isinstance(payload, BaseException):
                    raise payload
                if isinstance(payload, _End):
                    return
                if isinstance(payload, _Started):
                    current = item.seq
                    continue
                yield item.seq, payload
        finally:
            self.close()


@contextmanager
def interrupts_deferred():
    """Ctrl-C / SIGTERM wait until the block is done, then raise KeyboardInterrupt.

    A commit (DuckDB transaction + FAISS update) must not be cut: DuckDB turns a SIGINT that
    arrives during a query into ``RuntimeError("Query interrupted")``, not KeyboardInterrupt,
    which would end the run with a traceback instead of a clean interrupt.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    handlers = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if pending:
            raise KeyboardInterrupt


def _is_duckdb_interrupt(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and str(exc).strip().lower().startswith("query interrupted")


def run_local(store: IndexStore, plan: WorkPlan, spec: ModelSpec | None, params: IndexParams, settings: Settings,
              summary, faiss_index, show_progress: bool) -> str:
    """Decode, embed and commit ``plan.to_index`` in this process; returns the run status.

    Same contract as ``pipelines.index._index_with_ray``: ``spec`` may be None (resolved
    here), ``params`` is rebuilt with the resolved model id, ``faiss_index`` is the index
    after this run's deletes/copies (None on a fresh index), and ``summary`` is filled in.
    """
    from pipelines.index import (_CHUNK_FRAMES, _expected_seconds, _raise_interrupt, _short,
                                 _vocabularies, commit_batch, flush_faiss, load_resume, save_due_partial)

    if spec is None:
        spec = resolve_model(settings.model, settings.pretrained)  # ModelUnavailable: before any work
        store.check_model(spec.model_id)
    warn_if_random(spec)
    params = dataclasses.replace(params, model_id=spec.model_id)
    device = "cpu"
    if settings.device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            device = "cuda"
    threads = settings.torch_threads or os.cpu_count() or 1
    resume = load_resume(store, plan, params)
    jobs = make_video_jobs(plan.to_index, settings, spec.image_size, _CHUNK_FRAMES, resume)
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
    progress = None
    status = "ok"
    done: list[VideoResult] = []
    bank = None
    last_commit = last_flush = time.monotonic()

    def commit(force_flush: bool = False) -> None:
        with interrupts_deferred():
            _commit(force_flush)

    def _commit(force_flush: bool) -> None:
        nonlocal done, last_commit, last_flush, faiss_index
        if done:
            commit_batch(store, done, params, summary, faiss_index, bank)
            done = []
        last_commit = time.monotonic()
        if force_flush or time.monotonic() - last_flush > settings.faiss_flush_s:
            faiss_index = flush_faiss(store, faiss_index, settings)
            last_flush = time.monotonic()
        store.release_connection()  # searches and 'vidx status' may read the index until the next batch

    store.release_connection()  # the plan is applied; readers are welcome while videos decode
    model_loaded = False
    feed: _DecodeFeed | None = None
    asm: VideoAssembler | None = None
    try:
        # The model loads while the first file decodes (the queue fills meanwhile).
        feed = _DecodeFeed(jobs, settings)
        model = LoadedModel(spec, device=device, threads=threads, precision=settings.precision)
        store.register_model(spec.model_id, spec.name, spec.pretrained, model.dim, model.image_size,
                             model.logit_scale)
        if faiss_index is None:
            faiss_index = vec.new_flat_index(model.dim)
        if settings.tags:
            from indexer.tagging import LabelBank, label_cache_dir

            bank = LabelBank.build(model, _vocabularies(store, settings), cache_dir=label_cache_dir())
        model_loaded = True
        log.info("model %s loaded in-process (%s, %d threads)", spec.model_id, device, threads)
        progress = Progress(len(jobs), sum(_expected_seconds(j.file) for j in jobs), enabled=show_progress)
        header: ChunkHeader | None = None
        failed = False  # the current video failed in the model: drop its remaining chunks
        for seq, payload in feed:
            if asm is None or asm.job is not jobs[seq]:
                asm, header, failed = VideoAssembler(jobs[seq], resumed=resume.get(jobs[seq].file.path, ())), \
                    None, False
            if isinstance(payload, tuple) and payload and payload[0] == "hung":
                asm.fail(f"decoding hung (no progress for {payload[1]:.0f} s) and was stopped; the file is "
                         f"probably damaged (raise decode_timeout_s to allow more)")
                failed = True
            elif isinstance(payload, DecodeHeartbeat):
                progress.note_position(asm.job.file.path, payload.position_s)
                continue
            elif isinstance(payload, ChunkHeader):
                header = payload
                progress.note_position(asm.job.file.path, payload.spans[-1].end_s)
                continue
            elif isinstance(payload, np.ndarray):
                if header is not None and not failed:
                    try:
                        asm.chunks.append(embed_chunk(model, header, payload, settings.batch_size))
                    except Exception as exc:
                        asm.fail(f"embedding failed: {_short(exc)}")
                        failed = True
                    else:
                        save_due_partial(store, asm, params, settings)
                header = None
                continue
            elif isinstance(payload, DecodeOutcome):
                if not failed:
                    asm.outcome = payload
            else:
                continue
            result = asm.result()
            done.append(result)
            progress.advance(result)
            asm = None
            if time.monotonic() - last_commit > settings.commit_every_s:
                commit()
    except KeyboardInterrupt:
        status = "interrupted"
    except RuntimeError as exc:
        if not _is_duckdb_interrupt(exc):  # Ctrl-C inside a DuckDB query outside a commit
            raise
        status = "interrupted"
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if feed is not None:
            feed.close()
        try:
            if status == "interrupted" and asm is not None:  # keep the embedded clips of the video in flight
                save_due_partial(store, asm, params, settings, force=True)
            if model_loaded:
                commit(force_flush=True)
        finally:
            if progress is not None:
                progress.close()
    return status


def index_with_local(store: IndexStore, plan: WorkPlan, spec: ModelSpec | None, settings: Settings, summary,
                     faiss_index, show_progress: bool) -> str:
    """Drop-in for ``pipelines.index._index_with_ray`` (same signature)."""
    params = IndexParams(spec.model_id if spec else "", settings.clip_s, settings.snippets, settings.clip_recipe)
    return run_local(store, plan, spec, params, settings, summary, faiss_index, show_progress)


def decode_threads_alive() -> list[str]:
    """Names of decode threads still running: abandoned after a hang, or not stopped in time."""
    return [t.name for t in threading.enumerate() if t.name.startswith("vidx-decode-") and t.is_alive()]


def exit_without_finalizing_if_decoders_alive(rc: int) -> int:
    """Return ``rc``; but when a decode thread is still running (a hung file), flush and leave with
    ``os._exit(rc)``, because letting Python finalize under that thread can abort the process
    (see ``_JOIN_S``). Everything vidx writes is committed and closed by then."""
    alive = decode_threads_alive()
    if alive:
        log.info("leaving without interpreter shutdown: %s still running", ", ".join(alive))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


def use_local_executor() -> None:
    """Route ``pipelines.index.index_paths`` through this executor (tests, benchmarks)."""
    import pipelines.index as index_module

    index_module._index_with_ray = index_with_local


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.local index ...``: ``vidx index`` with the in-process executor."""
    from vidx.cli import main as vidx_main

    use_local_executor()
    return vidx_main(argv)


if __name__ == "__main__":
    sys.exit(main())
