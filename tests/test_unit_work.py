"""Unit tests for indexer.work: one video's decode stream, embedding chunks, assembling a result."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from conftest import TINY_MODEL, PacedContainer, make_color_video, make_video
from indexer.watch import DecodeHeartbeat
from indexer.discover import discover_files, fingerprint_file
from indexer.model import LoadedModel, resolve_model
from indexer.types import ClipSpan, VideoStatus
from indexer.work import (ChunkHeader, DecodeOutcome, EmbeddedChunk, VideoAssembler, VideoJob, decode_video,
                          embed_chunk, embed_chunks)


def job_for(path, clip_s=2.0, snippets=3, sampling="exact", timeout_s=60.0, chunk_frames=48) -> VideoJob:
    (f,) = discover_files([str(path)])
    return VideoJob(file=f, fingerprint=fingerprint_file(f.path), clip_s=clip_s, snippets=snippets,
                    sampling=sampling, short_side=32, timeout_s=timeout_s, chunk_frames=chunk_frames)


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    return make_color_video(tmp_path_factory.mktemp("work") / "rgb.mp4", ["red", "green", "blue"], 2.0)


@pytest.fixture(scope="module")
def model():
    return LoadedModel(resolve_model(TINY_MODEL, "random"))


def test_decode_video_stream_shape(rgb):
    items = list(decode_video(job_for(rgb, chunk_frames=6)))
    *body, outcome = items
    assert isinstance(outcome, DecodeOutcome)
    assert outcome.status == VideoStatus.INDEXED and outcome.error is None
    assert outcome.n_clips == 3
    assert outcome.probe.duration_s == pytest.approx(6.0)
    assert outcome.notes == ()
    headers, arrays = body[0::2], body[1::2]
    assert all(isinstance(h, ChunkHeader) for h in headers)
    assert all(isinstance(a, np.ndarray) for a in arrays)
    assert [len(h.spans) for h in headers] == [2, 1]  # 6 frames per chunk, 3 snippets per clip
    assert [a.shape[0] for a in arrays] == [6, 3]
    assert [s for h in headers for s in h.spans] == [ClipSpan(0, 0.0, 2.0), ClipSpan(1, 2.0, 4.0),
                                                      ClipSpan(2, 4.0, 6.0)]


@pytest.mark.parametrize("content,status,words", [
    (b"", VideoStatus.FAILED, "empty"),
    (b"<!DOCTYPE html><html></html>" * 5, VideoStatus.FAILED, "HTML"),
])
def test_decode_video_never_raises_for_bad_input(tmp_path, content, status, words):
    f = tmp_path / "bad.mp4"
    f.write_bytes(content)
    (outcome,) = list(decode_video(job_for(f)))
    assert outcome.status == status
    assert words in outcome.error
    assert outcome.n_clips == 0 and outcome.probe is None


def test_decode_video_stall_becomes_failure(rgb, monkeypatch):
    import indexer.decode as decode

    def circling(packet, stats, errors):  # the demuxer hands the same packet forever, no frame comes out
        time.sleep(0.01)
        return []

    real_open = decode.open_container
    monkeypatch.setattr(decode, "open_container", lambda p: PacedContainer(real_open(p), circle_after=0))
    monkeypatch.setattr(decode, "_decode_packet", circling)
    (outcome,) = [x for x in decode_video(job_for(rgb, timeout_s=0.3)) if isinstance(x, DecodeOutcome)]
    assert outcome.status == VideoStatus.FAILED
    assert "made no progress for 0.3 s" in outcome.error and "raise decode_timeout_s" in outcome.error


def test_decode_video_heartbeats(rgb):
    """With heartbeat_s, a heartbeat comes right after the probe (and while decoding is busy);
    without it, none: the items are then exactly the chunks and the outcome."""
    items = list(decode_video(dataclasses.replace(job_for(rgb), heartbeat_s=0.0)))
    assert isinstance(items[0], DecodeHeartbeat)
    assert isinstance(items[-1], DecodeOutcome) and items[-1].status == VideoStatus.INDEXED
    plain = list(decode_video(job_for(rgb)))
    assert not any(isinstance(x, DecodeHeartbeat) for x in plain)
    strip = [x for x in items if not isinstance(x, DecodeHeartbeat)]
    assert [type(x) for x in strip] == [type(x) for x in plain]


def test_embed_chunk_and_assemble(rgb, model):
    job = job_for(rgb, clip_s=2.0, snippets=3)
    asm = VideoAssembler(job)
    header = None
    for item in decode_video(job):
        if isinstance(item, ChunkHeader):
            header = item
        elif isinstance(item, np.ndarray):
            chunk = embed_chunk(model, header, item, batch_size=4)
            assert isinstance(chunk, EmbeddedChunk)
            assert chunk.vectors.shape == (len(header.spans), model.dim)
            assert chunk.frames == item.shape[0]
            # the consensus of each clip is the normalised mean of its snippet embeddings
            snip = model.encode_frames(item).reshape(len(header.spans), 3, -1)
            mean = snip.mean(1)
            np.testing.assert_allclose(chunk.vectors, mean / np.linalg.norm(mean, axis=1, keepdims=True),
                                       atol=1e-5)
            asm.chunks.append(chunk)
        else:
            asm.outcome = item
    assert asm.complete
    res = asm.result()
    assert res.status == VideoStatus.INDEXED
    assert [c.span.index for c in res.clips] == [0, 1, 2]
    assert res.frames_embedded == 9
    assert res.fingerprint == job.fingerprint
    np.testing.assert_allclose(np.linalg.norm(np.stack([c.vector for c in res.clips]), axis=1), 1, atol=1e-5)
    # equal-length clips: the video vector is the normalised mean of the clip vectors
    m = np.stack([c.vector for c in res.clips]).mean(0)
    np.testing.assert_allclose(res.video_vector, m / np.linalg.norm(m), atol=1e-5)
    # red, green and blue clips do not all embed the same
    assert np.abs(res.clips[0].vector - res.clips[2].vector).max() > 1e-4


def test_embed_chunks_of_several_videos_equal_one_chunk_at_a_time(rgb, model, tmp_path):
    # Chunks of different videos (different frame sizes) go to the model together.
    wide = make_video(tmp_path / "wide.mp4", "testsrc2=size=96x40:rate=10", duration_s=3)
    chunks = []
    for path, chunk_frames in ((rgb, 6), (wide, 3)):
        header = None
        for item in decode_video(job_for(path, clip_s=1.0, snippets=3, chunk_frames=chunk_frames)):
            if isinstance(item, ChunkHeader):
                header = item
            elif isinstance(item, np.ndarray):
                chunks.append((header, item))
    assert len({frames.shape[1:] for _, frames in chunks}) == 2 and len(chunks) >= 4
    together = embed_chunks(model, [h for h, _ in chunks], [f for _, f in chunks], batch_size=4)
    assert len(together) == len(chunks)
    for (header, frames), got in zip(chunks, together):
        alone = embed_chunk(model, header, frames, batch_size=4)
        assert (got.spans, got.times_s, got.frames) == (alone.spans, alone.times_s, alone.frames)
        np.testing.assert_allclose(got.vectors, alone.vectors, atol=1e-5)


def test_take_bundle_fills_a_call_up_to_the_frame_limit_in_order():
    from collections import deque

    from pipelines.index import take_bundle

    def chunk(name: str, clips: int, snippets: int = 2):
        spans = tuple(ClipSpan(i, float(i), float(i + 1)) for i in range(clips))
        return (name, ChunkHeader(name, spans, tuple((0.5,) * snippets for _ in spans), None), None)

    pending = deque([chunk("a", 1), chunk("b", 2), chunk("c", 1), chunk("d", 30), chunk("e", 1)])
    assert [c[0] for c in take_bundle(pending, 8)] == ["a", "b", "c"]  # 2 + 4 + 2 frames
    assert [c[0] for c in take_bundle(pending, 8)] == ["d"]  # 60 frames: alone, never split
    assert [c[0] for c in take_bundle(pending, 8)] == ["e"]
    assert take_bundle(pending, 8) == [] and not pending


def test_assembler_sorts_chunks_and_weights_by_duration(rgb):
    job = job_for(rgb)
    asm = VideoAssembler(job)
    e = np.eye(4, dtype=np.float32)
    late = EmbeddedChunk((ClipSpan(1, 1.0, 4.0),), ((2.5,),), e[1:2], 1)  # 3 s long
    early = EmbeddedChunk((ClipSpan(0, 0.0, 1.0),), ((0.5,),), e[0:1], 1)  # 1 s long
    asm.chunks += [late, early]
    asm.outcome = DecodeOutcome(job.file.path, VideoStatus.INDEXED, None, None, 2, 10, 0.1, "w")
    res = asm.result()
    assert [c.span.index for c in res.clips] == [0, 1]
    expected = np.array([1.0, 3.0, 0, 0]) / np.sqrt(10)
    np.testing.assert_allclose(res.video_vector, expected, atol=1e-6)


def test_assembler_without_clips_fails(rgb):
    job = job_for(rgb)
    asm = VideoAssembler(job)
    asm.outcome = DecodeOutcome(job.file.path, VideoStatus.INDEXED, None, None, 0, 0, 0.1, "w")
    res = asm.result()
    assert res.status == VideoStatus.FAILED
    assert res.error == "no clip was embedded"
    assert res.clips == () and res.video_vector is None


def test_assembler_fail_drops_chunks(rgb):
    job = job_for(rgb)
    asm = VideoAssembler(job)
    asm.chunks.append(EmbeddedChunk((ClipSpan(0, 0.0, 1.0),), ((0.5,),), np.ones((1, 4), np.float32), 1))
    asm.fail("model actor died", worker="w1")
    assert asm.complete
    res = asm.result()
    assert (res.status, res.error, res.clips, res.frames_embedded) == (VideoStatus.FAILED, "model actor died",
                                                                       (), 0)


def test_assembler_pending_chunks_not_complete(rgb):
    asm = VideoAssembler(job_for(rgb))
    asm.outcome = DecodeOutcome("x", VideoStatus.INDEXED, None, None, 1, 1, 0.0, "w")
    asm.pending = 1
    assert not asm.complete


def test_decode_video_heartbeats_while_a_raw_stream_is_measured(tmp_path, monkeypatch):
    """A raw stream with no duration in its header is read whole before decoding starts. Slow
    storage (10 ms a packet, 1 s in all) must neither fail it (stall bound 0.2 s) nor leave the
    driver without news: heartbeats come during that read, before any chunk."""
    import indexer.probe as probe_mod
    raw = make_video(tmp_path / "raw.h264", "testsrc2=size=64x48:rate=25", 4.0, extra=["-f", "h264"])
    real_open = probe_mod.open_container
    monkeypatch.setattr(probe_mod, "open_container", lambda p: PacedContainer(real_open(p), 0.01))
    items = list(decode_video(dataclasses.replace(job_for(raw, timeout_s=0.2), heartbeat_s=0.05)))
    assert items[-1].status == VideoStatus.INDEXED, items[-1].error
    first_chunk = next(i for i, x in enumerate(items) if isinstance(x, ChunkHeader))
    assert sum(isinstance(x, DecodeHeartbeat) for x in items[:first_chunk]) >= 5


def _chunk(*indices: int) -> EmbeddedChunk:
    spans = tuple(ClipSpan(i, float(i), i + 1.0) for i in indices)
    vectors = np.eye(8, dtype=np.float32)[list(indices)]
    return EmbeddedChunk(spans, tuple((i + 0.5,) for i in indices), vectors, len(indices))


def test_assembler_hands_out_finished_clips_in_order_when_due(rgb):
    asm = VideoAssembler(job_for(rgb), started=100.0)
    asm.chunks.append(_chunk(2, 3))  # came back before the chunk of clips 0 and 1
    assert asm.due_partial(5.0, now=200.0) == ()  # nothing from clip 0 on is embedded yet
    asm.chunks.append(_chunk(0, 1))
    assert asm.due_partial(5.0, now=104.0) == ()  # not due: 4 s since the start
    assert asm.due_partial(0.0, now=500.0) == ()  # 0 turns saving off
    assert [c.span.index for c in asm.due_partial(5.0, now=105.0)] == [0, 1, 2, 3]
    asm.chunks.append(_chunk(5))
    assert asm.due_partial(5.0, now=120.0) == ()  # clip 4 is missing
    asm.chunks.append(_chunk(4))
    assert asm.due_partial(5.0, now=109.0) == ()  # 4 s since the last save
    assert [c.span.index for c in asm.due_partial(5.0, now=110.0)] == [4, 5]
    asm.outcome = DecodeOutcome("x", VideoStatus.INDEXED, None, None, 8, 8, 0.0, "w")
    asm.pending = 1  # decoded to the end, the model still at work: a kill would lose clip 6
    asm.chunks.append(_chunk(6))
    assert [c.span.index for c in asm.due_partial(5.0, now=200.0)] == [6]
    asm.pending = 0
    asm.chunks.append(_chunk(7))
    assert asm.due_partial(5.0, now=999.0, force=True) == ()  # complete: the commit takes it from here


def test_assembler_joins_resumed_clips_with_the_rest(rgb):
    from indexer.types import ClipEmbedding

    job = dataclasses.replace(job_for(rgb), skip_clips=2)
    e = np.eye(8, dtype=np.float32)
    resumed = tuple(ClipEmbedding(ClipSpan(i, float(i), i + 1.0), e[i], (i + 0.5,)) for i in range(2))
    asm = VideoAssembler(job, resumed=resumed, started=0.0)
    asm.chunks.append(_chunk(2, 3))
    assert [c.span.index for c in asm.due_partial(1.0, now=10.0)] == [2, 3]  # after the saved ones
    assert [c.span.index for c in asm.saved_part()] == [0, 1, 2, 3]  # what a fresh start may skip
    asm.outcome = DecodeOutcome(job.file.path, VideoStatus.INDEXED, None, None, 4, 10, 0.1, "w")
    res = asm.result()
    assert [c.span.index for c in res.clips] == [0, 1, 2, 3]
    assert (res.clips_resumed, res.frames_embedded) == (2, 2)
    np.testing.assert_allclose(res.video_vector, e[:4].sum(0) / 2.0, atol=1e-6)


def test_decode_video_skips_saved_clips_and_gives_the_same_rest(rgb):
    def clips(job):
        out, header = {}, None
        for item in decode_video(job):
            if isinstance(item, ChunkHeader):
                header = item
            elif isinstance(item, np.ndarray):
                per = len(item) // len(header.spans)
                for i, span in enumerate(header.spans):
                    out[span] = item[i * per:(i + 1) * per]
            elif isinstance(item, DecodeOutcome):
                return out, item

    for shots in (True, False):
        base = dataclasses.replace(job_for(rgb, chunk_frames=6), shots=shots)
        full, full_out = clips(base)
        part, part_out = clips(dataclasses.replace(base, skip_clips=2))
        assert sorted(s.index for s in full) == list(range(len(full))) and len(full) >= 3
        assert sorted(part) == sorted(s for s in full if s.index >= 2)
        for span, frames in part.items():
            np.testing.assert_array_equal(frames, full[span])
        assert part_out.n_clips == full_out.n_clips and part_out.shots == full_out.shots
        assert any("resumed: 2 clips" in n for n in part_out.notes)


def test_decode_video_without_shots_jumps_over_saved_clips(tmp_path):
    """On the fixed grid the saved stretch is not decoded at all (keyframe jumps); shot
    detection, by contrast, must see it to find the same cuts."""
    video = make_video(tmp_path / "kf.mp4", "testsrc2=size=160x120:rate=25", duration_s=10.0,
                       extra=["-g", "25"])  # a keyframe every second
    base = dataclasses.replace(job_for(video), shots=False)
    full = [i for i in decode_video(base) if isinstance(i, DecodeOutcome)][0]
    part = [i for i in decode_video(dataclasses.replace(base, skip_clips=3)) if isinstance(i, DecodeOutcome)][0]
    assert full.n_clips == part.n_clips == 5
    assert part.frames_decoded < 0.6 * full.frames_decoded
