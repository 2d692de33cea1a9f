"""Small frozen dataclasses that cross module and process boundaries.

Data flows one way: ``VideoFile`` (discovery) -> ``VideoProbe`` (probe) ->
``ClipSpan`` (clip planning) -> ``ClipEmbedding`` (decode + model) ->
``VideoResult`` (what the writer commits). Everything here is plain data so it
pickles cheaply between Ray workers and the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class VideoStatus(str, Enum):
    """Outcome of indexing one file; stored as text in ``videos.status``."""

    INDEXED = "indexed"
    FAILED = "failed"  # a file we tried and could not read (corrupt, not a video, timeout)
    SKIPPED = "skipped"  # readable media but nothing to index (no video stream)


@dataclass(frozen=True)
class VideoFile:
    """A file found by discovery, with the cheap stat fields used for change detection."""

    path: str
    size_bytes: int
    mtime_ns: int


@dataclass(frozen=True)
class VideoProbe:
    """What the container and the first video stream say about a file.

    ``duration_s`` is computed by demuxing when the header has none;
    ``duration_source`` records which ("header", "stream", "demuxed").
    ``display_width``/``display_height`` are after rotation and sample aspect
    ratio, i.e. what a player shows.
    """

    container: str
    codec: str
    duration_s: float
    duration_source: str
    start_time_s: float
    avg_fps: float
    base_fps: float
    variable_frame_rate: bool
    n_frames: int | None
    width: int
    height: int
    display_width: int
    display_height: int
    rotation_deg: int
    sample_aspect_ratio: float
    has_audio: bool
    video_stream_index: int


@dataclass(frozen=True)
class ClipSpan:
    """A half-open time span [start_s, end_s) of a video, relative to the video's first frame."""

    index: int
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class ClipEmbedding:
    """A clip with its consensus vector (L2-normalised) and the snippet times it came from."""

    span: ClipSpan
    vector: np.ndarray
    snippet_times_s: tuple[float, ...]


@dataclass(frozen=True)
class VideoResult:
    """Everything the writer needs to commit one file in one transaction."""

    file: VideoFile
    fingerprint: str
    status: VideoStatus
    error: str | None = None
    probe: VideoProbe | None = None
    clips: tuple[ClipEmbedding, ...] = ()
    video_vector: np.ndarray | None = None
    frames_embedded: int = 0
    decode_s: float = 0.0
    worker: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    shots: tuple = ()  # indexer.decode.ShotSpan, when shot detection ran
    clips_resumed: int = 0  # clips of ``clips`` saved by an earlier run that stopped part way
