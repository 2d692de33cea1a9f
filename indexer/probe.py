"""Probing: is this file a video, and what are its duration, rate, size and geometry.

Uses PyAV (FFmpeg's libraries, shipped in the wheel: no system ffmpeg or
ffprobe needed). Header fields are trusted when present; when a container has
no duration (raw elementary streams, some WebM) the packets are demuxed, which
reads the file but decodes nothing. Failures raise ``ProbeFailure`` carrying
the status and a reason a user can act on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator
from fractions import Fraction

import av

from indexer.types import VideoProbe, VideoStatus
from indexer.watch import DecodeHeartbeat, DecodeTimeout, DecodeWatch

# ffmpeg marks a cover image in an audio file as a video stream with this disposition.
_ATTACHED_PIC = 1024


class ProbeFailure(Exception):
    """The file cannot be indexed; ``status`` says whether that is a failure or a skip."""

    def __init__(self, status: VideoStatus, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _sniff_reason(path: str) -> str | None:
    """Name what a non-media file really is, when its first bytes make that obvious."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512).lstrip().lower()
    except OSError:
        return None
    if head.startswith((b"<!doctype html", b"<html")):
        return ("is an HTML page, not a video (often a web page saved instead of the file it "
                "linked to); download the actual video file")
    if head.startswith((b"<?xml", b"{", b"[")):
        return "is a text/markup document, not a video"
    return None


def _fraction_to_float(value: Fraction | None) -> float:
    if value is None or value.denominator == 0:
        return 0.0
    return float(value)


def open_container(path: str) -> av.container.InputContainer:
    """Open ``path`` for reading, turning libav errors into ProbeFailure with a clear reason."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ProbeFailure(VideoStatus.FAILED, f"cannot read file: {exc.strerror}") from None
    if size == 0:
        raise ProbeFailure(VideoStatus.FAILED, "empty file (0 bytes); the copy or download is incomplete")
    try:
        # Cap probing so an odd file cannot make libav read far into it.
        return av.open(path, options={"probesize": "20000000", "analyzeduration": "20000000"})
    except av.error.FFmpegError as exc:
        sniffed = _sniff_reason(path)
        if sniffed:
            raise ProbeFailure(VideoStatus.FAILED, sniffed) from None
        raise ProbeFailure(
            VideoStatus.FAILED,
            f"not a readable media file ({exc.strerror or exc}); the file is damaged or of an unknown format",
        ) from None


def select_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first real video stream (cover art pictures are not video)."""
    for stream in container.streams.video:
        if not (int(stream.disposition) & _ATTACHED_PIC):
            return stream
    has_audio = bool(container.streams.audio)
    if container.streams.video:
        raise ProbeFailure(VideoStatus.SKIPPED, "audio file whose only picture is cover art; no video stream")
    raise ProbeFailure(VideoStatus.SKIPPED,
                       "audio only; no video stream" if has_audio else "no video stream")


def _demux_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                    watch: DecodeWatch, fps: float) -> Generator[DecodeHeartbeat, None, tuple[float, int, float]]:
    """Duration, frame count and first timestamp by reading every packet of the stream.

    Raw elementary streams give packets no duration; the last frame then lasts 1/fps. Reading
    a multi-GB raw stream takes as long as it takes: it is bounded by its progress through the
    file (``watch``), and says it is alive with heartbeats when ``watch`` asks for them.
    """
    tb = stream.time_base or Fraction(1, 1)
    frame_ticks = int(round(1 / (fps * tb))) if fps > 0 else 0
    first_pts: int | None = None
    end_pts = 0
    count = 0
    for packet in container.demux(stream):
        try:
            watch.packet(packet, tb)
        except DecodeTimeout:
            raise ProbeFailure(VideoStatus.FAILED, f"measuring the duration (the header has none) made no "
                                                   f"progress for {watch.stall_s:g} s; the file may be damaged "
                                                   f"(or raise decode_timeout_s for very slow storage)") from None
        beat = watch.heartbeat()
        if beat is not None:
            yield beat
            watch.resumed()
        if packet.size == 0:
            continue
        count += 1
        if packet.pts is None:
            continue
        first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
        end_pts = max(end_pts, packet.pts + (packet.duration or frame_ticks))
    if first_pts is None:
        return 0.0, count, 0.0
    return float((end_pts - first_pts) * tb), count, float(first_pts * tb)


def probe_video(path: str, timeout_s: float = 30.0) -> VideoProbe:
    """Probe ``path``; raise ProbeFailure when it is not an indexable video. ``timeout_s`` bounds
    a stall (no progress through the file), as in :func:`iter_probe`."""
    steps = iter_probe(path, timeout_s)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def iter_probe(path: str, stall_s: float = 30.0,
               heartbeat_s: float | None = None) -> Generator[DecodeHeartbeat, None, VideoProbe]:
    """:func:`probe_video` as a generator for streaming workers: ``probe = yield from
    iter_probe(...)``. With ``heartbeat_s``, it yields DecodeHeartbeat items while it reads a
    whole file to measure a duration the header lacks (raw elementary streams)."""
    container = open_container(path)
    try:
        stream = select_video_stream(container)
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise ProbeFailure(VideoStatus.FAILED, "video stream has no picture size; the file is damaged")

        avg_fps = _fraction_to_float(stream.average_rate)
        base_fps = _fraction_to_float(stream.guessed_rate or stream.base_rate)
        tb = stream.time_base or Fraction(1, 1)
        start_time_s = float(stream.start_time * tb) if stream.start_time is not None else 0.0

        rotation = _read_rotation(container, stream)
        n_frames: int | None = stream.frames or None
        if stream.duration:
            duration_s, source = float(stream.duration * tb), "stream"
        elif container.duration:
            duration_s, source = container.duration / 1_000_000, "header"
        else:
            # _read_rotation consumed packets: demux from a fresh handle.
            stream_index = stream.index
            container.close()
            container = open_container(path)
            stream = next(s for s in container.streams.video if s.index == stream_index)
            watch = DecodeWatch(stall_s, heartbeat_s, what="measuring the duration", reports_position=False)
            duration_s, n_frames, first_s = yield from _demux_duration(container, stream, watch, base_fps)
            source = "demuxed"
            if duration_s <= 0 and n_frames and base_fps:
                duration_s = n_frames / base_fps  # raw streams without timestamps
            start_time_s = first_s or start_time_s
            if n_frames and duration_s > 0:
                avg_fps = n_frames / duration_s  # the header's average rate is a guess here
        if not math.isfinite(duration_s) or duration_s < 0:
            duration_s = 0.0
        if avg_fps <= 0 and n_frames and duration_s > 0:
            avg_fps = n_frames / duration_s
        if avg_fps <= 0:
            avg_fps = base_fps
        # A container rate far from the nominal rate means frames are not evenly spaced.
        vfr = bool(avg_fps and base_fps and abs(avg_fps - base_fps) / base_fps > 0.02)

        sar = _fraction_to_float(stream.sample_aspect_ratio) or 1.0
        disp_w, disp_h = max(1, round(width * sar)), height
        if rotation % 180:
            disp_w, disp_h = disp_h, disp_w
        return VideoProbe(
            container=container.format.name,
            codec=ctx.name,
            duration_s=duration_s,
            duration_source=source,
            start_time_s=start_time_s,
            avg_fps=avg_fps,
            base_fps=base_fps,
            variable_frame_rate=vfr,
            n_frames=n_frames,
            width=width,
            height=height,
            display_width=disp_w,
            display_height=disp_h,
            rotation_deg=rotation,
            sample_aspect_ratio=sar,
            has_audio=bool(container.streams.audio),
            video_stream_index=stream.index,
        )
    finally:
        container.close()


def _read_rotation(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """Display rotation in degrees counter-clockwise (ffmpeg's convention), from the first frame.

    The display matrix is exposed on decoded frames; decoding one frame is cheap
    and the only version-stable way to read it through PyAV.
    """
    try:
        for frame in container.decode(stream):
            return int(round(frame.rotation or 0)) % 360
    except av.error.FFmpegError:
        return 0
    return 0
