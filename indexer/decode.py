"""Decoding snippet frames straight to model resolution, bounded in time.

One pass over the video stream with libav (PyAV). Every decoded frame's
presentation time is known exactly, so each TSN target time gets the nearest
real frame (exact mode), or the nearest keyframe when only keyframes are
decoded (keyframe mode, several times cheaper on long GOPs). Only chosen
frames are converted: scaled with the sample aspect ratio applied so the
shorter display side equals the model's input size, then rotated upright per
the display matrix. Cropping and normalisation stay with the model's own
preprocessing (open_clip transforms).

Damaged streams are decoded as far as they go: packets the decoder rejects are
skipped, and clips past the last decodable frame are dropped with a note.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from indexer.clips import snippet_times, snippets_for
from indexer.probe import ProbeFailure, open_container
from indexer.types import ClipSpan, VideoProbe, VideoStatus
from indexer.watch import DecodeHeartbeat, DecodeWatch

# Give up on a stream after this many consecutive packets the decoder rejects.
_MAX_CONSECUTIVE_ERRORS = 50


@dataclass(frozen=True)
class SnippetChunk:
    """Consecutive clips of one video with their K snippet frames each.

    ``frames`` holds every clip's snippets in clip order (len(times_s[i]) for clip i), uint8 RGB.
    """

    spans: tuple[ClipSpan, ...]
    times_s: tuple[tuple[float, ...], ...]
    frames: np.ndarray


@dataclass
class DecodeStats:
    frames_decoded: int = 0
    frames_converted: int = 0
    packet_errors: int = 0
    packets_skipped: int = 0
    last_frame_s: float = -1.0
    stopped_early: str | None = None
    clips_skipped: int = 0  # planned clips not produced because an earlier run saved them


def target_size(probe: VideoProbe, short_side: int) -> tuple[int, int]:
    """Stored (pre-rotation) width and height whose display's shorter side is ``short_side``."""
    disp_w, disp_h = probe.display_width, probe.display_height
    scale = short_side / min(disp_w, disp_h)
    out_w, out_h = max(1, round(disp_w * scale)), max(1, round(disp_h * scale))
    if probe.rotation_deg % 180:
        out_w, out_h = out_h, out_w  # the stored picture is rotated relative to the display
    # Even sizes keep swscale on its fast paths; the model crop removes the extra pixel.
    return out_w + (out_w % 2), out_h + (out_h % 2)


def _convert(frame: av.VideoFrame, size: tuple[int, int], rotation_deg: int,
             reformatter: VideoReformatter | None = None) -> np.ndarray:
    # A reused reformatter keeps its swscale context: 3x faster than frame.to_ndarray(width=...).
    reformatter = reformatter or VideoReformatter()
    rgb = reformatter.reformat(frame, width=size[0], height=size[1], format="rgb24",
                               interpolation="BICUBIC").to_ndarray()
    if rotation_deg:
        # ffmpeg's display rotation is counter-clockwise; np.rot90 turns counter-clockwise too.
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation_deg // 90))
    return rgb


def _decode_packet(packet: av.Packet, stats: DecodeStats, errors_in_row: list[int]) -> list | None:
    """A packet's frames; [] when the decoder rejects it; None once too many fail in a row.

    Damaged streams are decoded as far as they go: a bad packet is skipped, not fatal.
    """
    try:
        frames = packet.decode()
    except av.error.FFmpegError:
        stats.packet_errors += 1
        errors_in_row[0] += 1
        if errors_in_row[0] >= _MAX_CONSECUTIVE_ERRORS:
            stats.stopped_early = "too many undecodable packets in a row"
            return None
        return []
    errors_in_row[0] = 0
    return frames


def _frame_time(frame: av.VideoFrame, probe: VideoProbe, t0: float, n_decoded: int) -> float:
    """Seconds from the video's first frame; raw streams without timestamps count frames."""
    if frame.pts is None or frame.time is None:
        return (n_decoded / probe.avg_fps) if probe.avg_fps else 0.0
    return frame.time - t0


def keyframe_times(path: str, stream_index: int, t0: float, stall_s: float) -> list[float] | None:
    """Presentation times of the keyframe packets (demux only, no decoding); None if unknown."""
    watch = DecodeWatch(stall_s, what="reading the packet index")
    container = open_container(path)
    try:
        stream = next(s for s in container.streams.video if s.index == stream_index)
        tb = stream.time_base
        times = []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.pts is None or tb is None:
                return None
            if packet.is_keyframe:
                times.append(float(packet.pts * tb) - t0)
            watch.packet(packet, tb)
        return sorted(times)
    finally:
        container.close()


def iter_snippet_chunks(path: str, probe: VideoProbe, spans: tuple[ClipSpan, ...], k: int,
                        short_side: int, sampling: str = "exact", timeout_s: float = 120.0,
                        chunk_frames: int = 48, decode_threads: int = 1,
                        stats: DecodeStats | None = None, clip_s: float | None = None,
                        heartbeat_s: float | None = None) -> Iterator[SnippetChunk | DecodeHeartbeat]:
    """Yield chunks of clips with their snippet frames, decoding the file once.

    Raises DecodeTimeout when decoding makes no progress for ``timeout_s`` (see DecodeWatch),
    ProbeFailure when not a single frame decodes. With ``heartbeat_s``, a DecodeHeartbeat is
    yielded whenever that long has passed without a yield.
    """
    stats = stats if stats is not None else DecodeStats()
    watch = DecodeWatch(timeout_s, heartbeat_s)
    size = target_size(probe, short_side)
    clip_times = [snippet_times(span, snippets_for(span, k, clip_s)) for span in spans]
    targets = sorted({t for times in clip_times for t in times})
    chosen: dict[float, np.ndarray] = {}
    clips_per_chunk = max(1, chunk_frames // k)
    next_clip = 0

    def ready_chunks(final: bool) -> Iterator[SnippetChunk]:
        nonlocal next_clip
        while next_clip < len(spans):
            end = min(next_clip + clips_per_chunk, len(spans))
            if not final and not all(t in chosen for times in clip_times[next_clip:end] for t in times):
                return
            if final:
                # Keep only clips whose every snippet has a frame (damaged tails are dropped).
                end = next_clip
                while end < len(spans) and end - next_clip < clips_per_chunk and \
                        all(t in chosen for t in clip_times[end]):
                    end += 1
                if end == next_clip:
                    return
            frames = np.stack([chosen[t] for times in clip_times[next_clip:end] for t in times])
            yield SnippetChunk(spans=spans[next_clip:end], times_s=tuple(clip_times[next_clip:end]),
                               frames=frames)
            watch.resumed()
            for times in clip_times[next_clip:end]:
                for t in times:
                    chosen.pop(t, None)
            next_clip = end

    last_pick: list = [None, None]  # (time, rgb) of the last converted frame
    reformatter = VideoReformatter()

    def pick(item: tuple[float, av.VideoFrame]) -> np.ndarray:
        # Low frame-rate videos map neighbouring targets to the same frame: convert it once.
        if last_pick[0] != item[0]:
            last_pick[0], last_pick[1] = item[0], _convert(item[1], size, probe.rotation_deg, reformatter)
            stats.frames_converted += 1
        return last_pick[1]

    container = open_container(path)
    try:
        stream = next(s for s in container.streams.video if s.index == probe.video_stream_index)
        stream.thread_type = "AUTO" if decode_threads > 1 else "SLICE"
        stream.codec_context.thread_count = decode_threads
        if sampling == "keyframe":
            stream.codec_context.skip_frame = "NONKEY"
        t0 = probe.start_time_s
        tb = stream.time_base
        # Exact mode skips the stretches between targets that a keyframe lets us jump over:
        # the same frames come out, with fewer decoded (see BENCHMARKS.md).
        kf_times = keyframe_times(path, probe.video_stream_index, t0, timeout_s) \
            if sampling == "exact" and len(targets) > 0 else None
        sent_until = float("-inf")  # latest presentation time sent to the decoder
        resume_at: float | None = None  # skipping packets until the keyframe at this time
        skipping_nonref = False
        near_s = 3.0 / probe.avg_fps if probe.avg_fps else 0.2
        prev: tuple[float, av.VideoFrame] | None = None
        ti = 0  # next target index
        errors_in_row = [0]
        # The last frame lasts until the end of the video; frames that late still serve targets.
        for packet in container.demux(stream):
            watch.packet(packet, tb)
            beat = watch.heartbeat()
            if beat is not None:
                yield beat
                watch.resumed()
            if kf_times and packet.size and packet.pts is not None:
                pt = float(packet.pts * tb) - t0
                if resume_at is None and ti < len(targets):
                    j = bisect.bisect_right(kf_times, targets[ti] + 1e-6) - 1
                    if j >= 0 and kf_times[j] > sent_until + 1e-6 and kf_times[j] > pt + 1e-6:
                        resume_at = kf_times[j]
                if resume_at is not None:
                    if not (packet.is_keyframe and pt >= resume_at - 1e-6):
                        stats.packets_skipped += 1
                        continue
                    resume_at = None
                    stream.codec_context.flush_buffers()  # frames still inside are not needed
                    prev = None
                sent_until = max(sent_until, pt)
                if ti < len(targets):
                    # Frames nothing refers to are skipped unless they are near the next target.
                    far = pt < targets[ti] - near_s
                    if far != skipping_nonref:
                        stream.codec_context.skip_frame = "NONREF" if far else "DEFAULT"
                        skipping_nonref = far
            frames = _decode_packet(packet, stats, errors_in_row)
            if frames is None:
                break
            for frame in frames:
                t = _frame_time(frame, probe, t0, stats.frames_decoded)
                stats.frames_decoded += 1
                stats.last_frame_s = max(stats.last_frame_s, t)
                # Assign every target that lies before this frame to the nearer of prev and this.
                while ti < len(targets) and targets[ti] <= t:
                    target = targets[ti]
                    if prev is not None and (target - prev[0]) < (t - target):
                        chosen[target] = pick(prev)
                    else:
                        chosen[target] = pick((t, frame))
                    ti += 1
                prev = (t, frame)
                yield from ready_chunks(final=False)
        if prev is None:
            raise ProbeFailure(VideoStatus.FAILED, "no frame could be decoded; the video stream is damaged")
        # The last frame stays on screen until the end; it serves targets after it unless the
        # stream broke off early (then those clips are not in the file as far as we can read).
        frame_gap_s = 2.0 / probe.avg_fps if probe.avg_fps else 0.1
        if sampling == "keyframe":
            tolerance_s = float("inf")
        elif stats.packet_errors or stats.stopped_early:
            tolerance_s = frame_gap_s  # a broken-off stream: later clips are not in what we read
        else:
            tolerance_s = max(frame_gap_s, 1.0)  # headers round durations; the last frame stays up
        for target in targets[ti:]:
            if target - prev[0] <= tolerance_s:
                chosen[target] = pick(prev)
        yield from ready_chunks(final=True)
    finally:
        container.close()


_YUV420 = frozenset({"yuv420p", "yuvj420p"})
# Video-range (16-235 / 16-240) to full-range lookup tables for yuv420p; yuvj420p is full range.
_LUMA_LUT = np.clip((np.arange(256) - 16) * 255.0 / 219.0, 0, 255).round().astype(np.uint8)
_CHROMA_LUT = np.clip((np.arange(256) - 128) * 255.0 / 224.0 + 128, 0, 255).round().astype(np.uint8)


def _frame_bytes(frame: av.VideoFrame) -> int:
    return sum(p.buffer_size for p in frame.planes)


def small_bgr(frame: av.VideoFrame, width: int, reformatter: VideoReformatter) -> np.ndarray:
    """A ~``width``-pixel BGR copy of a frame for shot detection.

    For 4:2:0 frames (nearly all video) the planes are subsampled directly, ~10x cheaper
    than swscale; detectors compare whole-frame statistics, so point sampling is enough.
    """
    import cv2

    if frame.format.name in _YUV420 and frame.width >= 2 * width:
        cw, ch = frame.width // 2, frame.height // 2
        step = max(1, cw // width)
        planes = [np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in frame.planes[:3]]
        y = planes[0][:frame.height:2 * step, :frame.width:2 * step]
        u = planes[1][:ch:step, :cw:step]
        v = planes[2][:ch:step, :cw:step]
        h, w = min(y.shape[0], u.shape[0]), min(y.shape[1], u.shape[1])
        y, u, v = (np.ascontiguousarray(x[:h, :w]) for x in (y, u, v))
        if frame.format.name == "yuv420p":
            y, u, v = _LUMA_LUT[y], _CHROMA_LUT[u], _CHROMA_LUT[v]
        return cv2.cvtColor(cv2.merge([y, u, v]), cv2.COLOR_YUV2BGR)
    height = max(2, int(round(width * frame.height / frame.width / 2)) * 2)
    return reformatter.reformat(frame, width=width, height=height, format="bgr24",
                                interpolation="AREA").to_ndarray()


class FrameNumbering:
    """Frame numbers in presentation order, also when the decoder skips frames.

    A decoder returns a frame only once every packet shown before it has been read, so a
    frame's number is the count of packets read so far with a smaller timestamp. A min-heap
    keeps just the packets not yet passed (the reorder window), not the whole stream.
    """

    def __init__(self) -> None:
        self._pending: list[int] = []
        self._passed = 0
        self._packets = 0
        self._timed = True

    def add_packet(self, packet: av.Packet) -> None:
        if packet.size == 0:
            return  # the flush packet at the end
        self._packets += 1
        if packet.pts is None:
            self._timed = False
        else:
            heapq.heappush(self._pending, packet.pts)

    def number(self, frame: av.VideoFrame, n_decoded: int) -> int:
        """The frame's number; streams without timestamps fall back to counting decoded frames."""
        if not self._timed or frame.pts is None:
            return n_decoded
        while self._pending and self._pending[0] < frame.pts:
            heapq.heappop(self._pending)
            self._passed += 1
        return self._passed

    def total(self) -> int:
        """Frames in the stream as far as it was read (packets; one frame each)."""
        return self._packets


@dataclass(frozen=True)
class ShotSpan:
    """A detected shot, in seconds from the first frame and in frame numbers (presentation order
    of the whole stream, counting frames the decoder skipped)."""

    start_s: float
    end_s: float
    start_frame: int
    end_frame: int  # exclusive
    transition: str  # how the shot begins: "start", "cut" or "fade"


def iter_shot_chunks(path: str, probe: VideoProbe, k: int, short_side: int, clip_s: float,
                     min_shot_s: float, timeout_s: float = 120.0, chunk_frames: int = 48,
                     decode_threads: int = 1, stats: DecodeStats | None = None,
                     candidate_fps: float = 8.0, shot_threshold: float = 3.0,
                     shots_out: list | None = None, reference_frames_only: bool = True,
                     hold_budget_bytes: int = 256 << 20,
                     heartbeat_s: float | None = None,
                     skip_clips: int = 0) -> Iterator[SnippetChunk | DecodeHeartbeat]:
    """Decode the video once: detect shots on a small copy of each frame, plan shot-aligned
    clips as cuts become final, and take each snippet from a buffer of recent candidate frames.

    With ``reference_frames_only`` the decoder skips frames that no other frame refers to;
    frame numbers stay those of the full stream (see FrameNumbering).

    Snippets are the candidate nearest each segment centre (candidates are ``candidate_fps``
    apart, so at most half that interval off the exact centre). Detected shots are appended
    to ``shots_out`` as ShotSpan. ``timeout_s`` bounds a stall (DecodeWatch); with
    ``heartbeat_s``, DecodeHeartbeat items come between chunks as in iter_snippet_chunks.
    Clips numbered below ``skip_clips`` are planned (and shots detected) as usual but not
    produced: their frames are never converted (``stats.clips_skipped`` counts them).
    """
    from collections import deque

    from indexer.shots import DETECT_WIDTH, OnlineClipPlanner, SceneDetectShots

    stats = stats if stats is not None else DecodeStats()
    watch = DecodeWatch(timeout_s, heartbeat_s)
    size = target_size(probe, short_side)
    det_w = min(DETECT_WIDTH, probe.width)
    detector = SceneDetectShots(probe.avg_fps or probe.base_fps, threshold=shot_threshold,
                                min_scene_len_s=min_shot_s)
    planner = OnlineClipPlanner(clip_s, min_shot_s)
    numbering = FrameNumbering()
    candidates: deque[tuple[float, np.ndarray | av.VideoFrame]] = deque()
    held_bytes = 0
    cand_step = 1.0 / candidate_fps
    clips_per_chunk = max(1, chunk_frames // k)
    ready: list[tuple[ClipSpan, tuple[float, ...], list[np.ndarray]]] = []

    def converted(j: int) -> np.ndarray:
        t, item = candidates[j]
        if isinstance(item, av.VideoFrame):
            item = _convert(item, size, probe.rotation_deg, model_fmt)
            stats.frames_converted += 1
            candidates[j] = (t, item)
        return item

    def take(spans: list[ClipSpan]) -> None:
        times_list = [c[0] for c in candidates]
        for span in spans:
            if span.index < skip_clips:
                stats.clips_skipped += 1
                continue
            times = snippet_times(span, snippets_for(span, k, clip_s))
            frames = []
            for target in times:
                j = bisect.bisect_left(times_list, target)
                if j >= len(times_list) or (j > 0 and target - times_list[j - 1] <= times_list[j] - target):
                    j -= 1
                frames.append(converted(max(j, 0)))
            ready.append((span, times, frames))

    def hold(t: float, frame: av.VideoFrame) -> None:
        # Candidates stay decoded frames until a snippet picks them: converting all of them
        # (8 per second) cost more than the shot detector. Past the memory budget, the oldest
        # held frames are converted now instead (model-size RGB is far smaller than 4K YUV).
        nonlocal held_bytes
        candidates.append((t, frame))
        held_bytes += _frame_bytes(frame)
        j = 0
        while held_bytes > hold_budget_bytes and j < len(candidates) - 1:
            if isinstance(candidates[j][1], av.VideoFrame):
                held_bytes -= _frame_bytes(candidates[j][1])
                converted(j)
            j += 1

    def flush(final: bool) -> Iterator[SnippetChunk]:
        while len(ready) >= clips_per_chunk or (final and ready):
            part, ready[:] = ready[:clips_per_chunk], ready[clips_per_chunk:]
            yield SnippetChunk(spans=tuple(p[0] for p in part), times_s=tuple(p[1] for p in part),
                               frames=np.stack([f for p in part for f in p[2]]))
            watch.resumed()

    model_fmt, small_fmt = VideoReformatter(), VideoReformatter()
    container = open_container(path)
    last: tuple[float, av.VideoFrame] | None = None
    last_was_candidate = False
    try:
        stream = next(s for s in container.streams.video if s.index == probe.video_stream_index)
        stream.thread_type = "AUTO" if decode_threads > 1 else "SLICE"
        stream.codec_context.thread_count = decode_threads
        if reference_frames_only:
            # Frames no other frame refers to (most B-frames) are never decoded: 20-60% less
            # decoding on typical H.264. Encoders put a reference frame at a cut, so cuts are
            # still found on their frame; fades are placed between the frames decoded.
            stream.codec_context.skip_frame = "NONREF"
        t0 = probe.start_time_s
        next_candidate = float("-inf")
        errors_in_row = [0]
        tb = stream.time_base
        for packet in container.demux(stream):
            watch.packet(packet, tb)
            beat = watch.heartbeat()
            if beat is not None:
                yield beat
                watch.resumed()
            frames = _decode_packet(packet, stats, errors_in_row)
            if frames is None:
                break
            numbering.add_packet(packet)
            for frame in frames:
                t = _frame_time(frame, probe, t0, stats.frames_decoded)
                fnum = numbering.number(frame, stats.frames_decoded)
                if last is not None and t <= last[0]:
                    continue  # duplicate or out-of-order timestamp: keep times increasing
                small = small_bgr(frame, det_w, small_fmt)
                planner.add_cuts(detector.feed(fnum, t, small))
                stats.frames_decoded += 1
                stats.last_frame_s = t
                last_was_candidate = t >= next_candidate - 1e-9
                if last_was_candidate:
                    hold(t, frame)
                    next_candidate = t + cand_step
                last = (t, frame)
                # A fade-out can hold the horizon back; 30 s later its cut no longer matters.
                horizon = max(detector.horizon_s(), t - 30.0)
                take(planner.advance(horizon))
                keep_from = planner.open_since_s() - cand_step
                while len(candidates) > 1 and candidates[1][0] <= keep_from:
                    _, dropped = candidates.popleft()
                    if isinstance(dropped, av.VideoFrame):
                        held_bytes -= _frame_bytes(dropped)
                yield from flush(final=False)
        if last is None:
            raise ProbeFailure(VideoStatus.FAILED, "no frame could be decoded; the video stream is damaged")
        if not last_was_candidate:
            hold(last[0], last[1])
        planner.add_cuts(detector.finish())
        frame_s = 1.0 / probe.avg_fps if probe.avg_fps else 0.0
        end_s = last[0] + frame_s
        if probe.duration_s > 0 and (end_s > probe.duration_s or
                                     (stats.stopped_early is None and stats.packet_errors == 0)):
            # The stored duration is the timeline: the last frame is shown until its end, and
            # frames stamped past it (rounded headers) belong to the last clip, not a new one.
            end_s = probe.duration_s
        take(planner.finish(end_s))
        yield from flush(final=True)
        if shots_out is not None:
            times, numbers = detector.times, detector.frames
            n_frames = max(numbering.total(), numbers[-1] + 1)

            def frame_at(t: float) -> int:
                # A cut can fall between decoded frames (a fade placed between reference
                # frames): its frame number is interpolated between the neighbours' numbers.
                j = bisect.bisect_left(times, t - 1e-6)
                if j >= len(numbers):
                    return n_frames
                if j == 0 or times[j] - t <= 1e-6:
                    return numbers[j]
                share = (t - times[j - 1]) / (times[j] - times[j - 1])
                return numbers[j - 1] + round(share * (numbers[j] - numbers[j - 1]))

            spans = planner.shots(end_s)
            for i, (start, end, kind) in enumerate(spans):
                # The last shot ends with the stream, also when frames are stamped past the
                # stored duration (rounded headers): its end is the stream's frame count.
                last_frame = n_frames if i == len(spans) - 1 else frame_at(end)
                shots_out.append(ShotSpan(start, end, frame_at(start), last_frame, kind))
    finally:
        container.close()
