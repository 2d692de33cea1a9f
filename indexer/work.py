"""Per-video work units, independent of how they are scheduled.

``decode_video`` runs where decoding happens (a Ray CPU worker, or in-process):
it probes, plans clips and yields, alternately, a small ``ChunkHeader`` and
the chunk's frame array, then a final ``DecodeOutcome``. The split lets a
scheduler read the small header without pulling frames through itself.
``embed_chunks`` runs where the model is, on the chunks of one or more videos
at once (short videos make small chunks). ``VideoAssembler`` joins the two into
the ``VideoResult`` the store commits. Every failure becomes data here.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from indexer.clips import plan_clips
from indexer.config import Settings
from indexer.decode import DecodeStats, ShotSpan, iter_shot_chunks, iter_snippet_chunks
from indexer.model import LoadedModel, consensus
from indexer.probe import ProbeFailure, iter_probe
from indexer.types import ClipEmbedding, ClipSpan, VideoFile, VideoProbe, VideoResult, VideoStatus
from indexer.watch import DecodeHeartbeat, DecodeTimeout, heartbeat_interval


@dataclass(frozen=True)
class VideoJob:
    """What a decode worker needs to process one file."""

    file: VideoFile
    fingerprint: str
    clip_s: float
    snippets: int
    sampling: str
    short_side: int
    timeout_s: float
    chunk_frames: int = 48
    decode_threads: int = 1
    shots: bool = False  # detect shots in the same decode and align clips to them
    min_shot_s: float = 0.6
    shot_threshold: float = 3.0
    shot_reference_frames_only: bool = True  # skip unreferenced frames (see iter_shot_chunks)
    heartbeat_s: float | None = None  # yield DecodeHeartbeat this often while busy (None: never)
    # Clips 0..skip_clips-1 were embedded by an earlier run (a saved partial video): they are
    # planned as before, so every later clip comes out the same, but not converted or sent.
    skip_clips: int = 0


def make_video_jobs(to_index: list[tuple[VideoFile, str]], settings: Settings, short_side: int,
                    chunk_frames: int, resume: dict[str, tuple[ClipEmbedding, ...]] | None = None
                    ) -> list[VideoJob]:
    """One VideoJob per (file, fingerprint) to index, from the run's Settings; ``resume``
    (path -> saved clips, ``IndexStore.load_partial``) makes a job skip the saved clips."""
    shots = settings.shots and settings.sampling == "exact"
    resume = resume or {}
    return [VideoJob(f, fp, settings.clip_s, settings.snippets, settings.sampling, short_side,
                     settings.decode_timeout_s, chunk_frames, shots=shots, min_shot_s=settings.min_shot_s,
                     shot_threshold=settings.shot_threshold,
                     shot_reference_frames_only=settings.shot_frames == "reference",
                     heartbeat_s=heartbeat_interval(settings.decode_timeout_s),
                     skip_clips=len(resume.get(f.path, ())))
            for f, fp in to_index]


@dataclass(frozen=True)
class ChunkHeader:
    """Announces that the next item of the stream is the frame array of these clips."""

    path: str
    spans: tuple[ClipSpan, ...]
    times_s: tuple[tuple[float, ...], ...]
    probe: VideoProbe


@dataclass(frozen=True)
class DecodeOutcome:
    """Last item of a decode stream: how it went."""

    path: str
    status: VideoStatus
    error: str | None
    probe: VideoProbe | None
    n_clips: int
    frames_decoded: int
    decode_s: float
    worker: str
    notes: tuple[str, ...] = ()
    shots: tuple[ShotSpan, ...] = ()


@dataclass(frozen=True)
class EmbeddedChunk:
    spans: tuple[ClipSpan, ...]
    times_s: tuple[tuple[float, ...], ...]
    vectors: np.ndarray  # (n_clips, dim), L2-normalised consensus vectors
    frames: int


def worker_name() -> str:
    try:
        import ray

        if ray.is_initialized():
            return f"{ray.get_runtime_context().get_node_id()[:12]}:{os.getpid()}"
    except Exception:  # Ray absent or not in a worker: a host name is fine
        pass
    return f"{socket.gethostname()}:{os.getpid()}"


def decode_video(job: VideoJob) -> Iterator[ChunkHeader | np.ndarray | DecodeHeartbeat | DecodeOutcome]:
    """Probe and decode one file. Never raises for bad input: the outcome says what happened.

    With ``job.heartbeat_s`` set, DecodeHeartbeat items come while decoding is busy between
    chunks (and once after the probe), so a driver can tell a slow file from a hung one."""
    t0 = time.monotonic()
    probe: VideoProbe | None = None
    stats = DecodeStats()
    n_clips = 0
    expected_clips = 0
    shots: list[ShotSpan] = []
    notes: list[str] = []
    status, error = VideoStatus.INDEXED, None
    try:
        # A file without a duration in its header is read whole to measure it: bounded by its
        # progress, with heartbeats, like the decode itself.
        probe = yield from iter_probe(job.file.path, job.timeout_s, job.heartbeat_s)
        if job.heartbeat_s is not None:
            yield DecodeHeartbeat(0.0)  # probed: alive before the decoder opens the file
        timeout = job.timeout_s  # a bound on a stall, not on the whole decode (DecodeWatch)
        if job.shots:
            # Shots need the whole stream even when clips are skipped: the cuts, and so the
            # clips after the skipped ones, come out exactly as in an uninterrupted run.
            chunks = iter_shot_chunks(job.file.path, probe, job.snippets, job.short_side, job.clip_s,
                                      job.min_shot_s, timeout, job.chunk_frames, job.decode_threads, stats,
                                      shot_threshold=job.shot_threshold, shots_out=shots,
                                      reference_frames_only=job.shot_reference_frames_only,
                                      heartbeat_s=job.heartbeat_s, skip_clips=job.skip_clips)
        else:
            spans = plan_clips(probe.duration_s, job.clip_s)
            if not spans:
                # No usable duration in the header: one clip over whatever decodes is still useful.
                spans = (ClipSpan(0, 0.0, max(1.0 / max(probe.avg_fps, 1.0), 1e-3)),)
                notes.append("no duration; indexed as one clip")
            expected_clips = len(spans)
            stats.clips_skipped = min(job.skip_clips, len(spans))
            spans = spans[stats.clips_skipped:]  # the keyframe jumps skip their stretch of the file
            chunks = iter_snippet_chunks(job.file.path, probe, spans, job.snippets, job.short_side,
                                         job.sampling, timeout, job.chunk_frames, job.decode_threads, stats,
                                         clip_s=job.clip_s, heartbeat_s=job.heartbeat_s) if spans else iter(())
        for chunk in chunks:
            if isinstance(chunk, DecodeHeartbeat):
                yield chunk
                continue
            n_clips += len(chunk.spans)
            yield ChunkHeader(job.file.path, chunk.spans, chunk.times_s, probe)
            yield chunk.frames
        n_clips += stats.clips_skipped
        if stats.clips_skipped:
            notes.append(f"resumed: {stats.clips_skipped} clips saved by an earlier run were kept")
        if stats.packet_errors:
            notes.append(f"{stats.packet_errors} damaged packets skipped")
        if n_clips < expected_clips:
            notes.append(f"decoded up to {stats.last_frame_s:.2f} s of {probe.duration_s:.2f} s; "
                         f"{expected_clips - n_clips} clips after that not indexed")
        elif job.shots and probe.duration_s - stats.last_frame_s > 2.0 and (stats.packet_errors or stats.stopped_early):
            notes.append(f"decoded up to {stats.last_frame_s:.2f} s of {probe.duration_s:.2f} s")
        if n_clips == 0:
            status, error = VideoStatus.FAILED, "no clip could be decoded; the video stream is damaged"
    except ProbeFailure as exc:
        status, error = exc.status, exc.reason
    except DecodeTimeout as exc:
        status, error = VideoStatus.FAILED, f"{exc}; the file may be damaged (raise decode_timeout_s to allow more)"
    except MemoryError:
        status, error = VideoStatus.FAILED, "out of memory while decoding"
    except Exception as exc:  # a libav or numpy error on one odd file must not stop the run
        status, error = VideoStatus.FAILED, f"decode error: {type(exc).__name__}: {exc}"
    yield DecodeOutcome(job.file.path, status, error, probe, n_clips, stats.frames_decoded,
                        time.monotonic() - t0, worker_name(), tuple(notes),
                        tuple(shots) if status == VideoStatus.INDEXED else ())


def embed_chunk(model: LoadedModel, header: ChunkHeader, frames: np.ndarray, batch_size: int) -> EmbeddedChunk:
    """Encode a chunk's snippet frames and reduce each clip's snippets to one consensus vector."""
    return embed_chunks(model, [header], [frames], batch_size)[0]


def embed_chunks(model: LoadedModel, headers: list[ChunkHeader], frames: list[np.ndarray],
                 batch_size: int) -> list[EmbeddedChunk]:
    """``embed_chunk`` of several chunks (of any videos), their frames run in shared batches."""
    out = []
    for header, vecs in zip(headers, model.encode_frame_groups(frames, batch_size=batch_size)):
        ends = np.cumsum([len(t) for t in header.times_s])
        vectors = np.stack([consensus(vecs[end - len(t):end])
                            for t, end in zip(header.times_s, ends)]).astype(np.float32)
        out.append(EmbeddedChunk(header.spans, header.times_s, vectors, len(vecs)))
    return out


@dataclass
class VideoAssembler:
    """Collects a video's embedded chunks and its outcome into one VideoResult.

    ``resumed`` holds the clips an earlier run saved (the job skips them). While the video
    is in flight, ``due_partial`` hands out the newly finished clips to save every
    ``checkpoint_s``, so that a kill loses at most that much of a long file."""

    job: VideoJob
    resumed: tuple[ClipEmbedding, ...] = ()
    chunks: list[EmbeddedChunk] = field(default_factory=list)
    outcome: DecodeOutcome | None = None
    pending: int = 0  # chunks sent to the model and not back yet
    started: float = field(default_factory=time.monotonic)
    saved_at: float | None = None  # when clips were last handed out to save (None: the start)

    def __post_init__(self) -> None:
        self._saved: list[ClipEmbedding] = list(self.resumed)  # clips 0..n-1, saved
        if self.saved_at is None:
            self.saved_at = self.started

    @property
    def complete(self) -> bool:
        return self.outcome is not None and self.pending == 0

    def _embedded(self) -> list[ClipEmbedding]:
        return [ClipEmbedding(span, chunk.vectors[i], chunk.times_s[i])
                for chunk in self.chunks for i, span in enumerate(chunk.spans)]

    def due_partial(self, every_s: float, now: float | None = None, force: bool = False
                    ) -> tuple[ClipEmbedding, ...]:
        """The clips to add to the video's saved part, when ``every_s`` has passed since the
        last save (or at once with ``force``, e.g. on Ctrl-C): those right after the saved
        ones, in order, up to the first one that is not embedded yet (chunks can come back
        out of order). Empty when nothing is due, when the video is complete (its commit
        takes over) or when ``every_s`` is 0 (saving is off). A video whose decode has ended
        while the model still works on its chunks is not complete yet."""
        now = time.monotonic() if now is None else now
        if every_s <= 0 or self.complete or (now - self.saved_at < every_s and not force):
            return ()
        by_index = {c.span.index: c for c in self._embedded()}
        new = []
        while len(self._saved) + len(new) in by_index:
            new.append(by_index[len(self._saved) + len(new)])
        if not new:
            return ()
        self.saved_at = now
        self._saved.extend(new)
        return tuple(new)

    def saved_part(self) -> tuple[ClipEmbedding, ...]:
        """Every clip of the video saved so far (resumed, then handed out by ``due_partial``):
        what a fresh start of the file can skip."""
        return tuple(self._saved)

    def result(self) -> VideoResult:
        out = self.outcome
        assert out is not None
        embedded = self._embedded()
        fresh = {c.span.index for c in embedded}
        clips = sorted([c for c in self.resumed if c.span.index not in fresh] + embedded,
                       key=lambda c: c.span.index)
        status, error = out.status, out.error
        if status == VideoStatus.INDEXED and not clips:
            status, error = VideoStatus.FAILED, error or "no clip was embedded"
        video_vector = None
        if clips and status == VideoStatus.INDEXED:
            weights = np.array([max(c.span.duration_s, 1e-6) for c in clips], np.float32)
            mean = (np.stack([c.vector for c in clips]) * weights[:, None]).sum(0)
            video_vector = mean / max(float(np.linalg.norm(mean)), 1e-12)
        return VideoResult(
            file=self.job.file, fingerprint=self.job.fingerprint, status=status, error=error,
            probe=out.probe, clips=tuple(clips) if status == VideoStatus.INDEXED else (),
            video_vector=video_vector, frames_embedded=sum(c.frames for c in self.chunks),
            decode_s=out.decode_s, worker=out.worker, notes=out.notes,
            shots=out.shots if status == VideoStatus.INDEXED else (),
            clips_resumed=sum(c.span.index not in fresh for c in clips) if status == VideoStatus.INDEXED else 0)

    def fail(self, reason: str, worker: str = "") -> None:
        self.outcome = DecodeOutcome(self.job.file.path, VideoStatus.FAILED, reason, None, 0, 0,
                                     time.monotonic() - self.started, worker)
        self.chunks.clear()
