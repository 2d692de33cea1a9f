"""Bounds on reading a file, by its progress rather than its length, and the heartbeats that
tell a driver a busy reader is alive (used by the probe and the decoders)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import av


class DecodeTimeout(Exception):
    """Decoding a file stopped making progress for longer than its bound."""


@dataclass(frozen=True)
class DecodeHeartbeat:
    """Yielded by a decode that has been busy a while without a chunk to show (only when asked
    for, with ``heartbeat_s``): it tells the driver the worker is alive and moving forward."""

    position_s: float  # seconds into the video decoded so far


def heartbeat_interval(stall_s: float) -> float:
    """How often a busy decode says it is alive: often enough that the driver, which allows
    ``stall_s`` plus a grace between two signs of life, never mistakes slow for hung."""
    return max(0.05, min(5.0, stall_s / 4))


class DecodeWatch:
    """Bounds a decode by its progress through the file, not by the video's length.

    A decode that keeps moving forward may take as long as it needs: 8K HEVC decodes slower
    than real time on a small machine, and a bound that grew with the duration failed such files
    after all the work was done. Moving forward means a packet from further into the file (byte
    position) or further into the video (timestamp) than any before: either is enough, so a
    timestamp reset in a broadcast capture (position goes on) or an edit list that plays a stretch
    twice (timestamps go on) still count. A decode with neither for ``stall_s`` (a demuxer going
    round in circles) raises DecodeTimeout. Time the consumer holds a yielded item is not counted
    (``resumed``). A libav call that never returns (a decoder grinding on one damaged packet, a
    read that blocks) cannot be stopped from in here: the driver kills that worker when neither
    chunks nor heartbeats reach it for ``stall_s`` plus a grace.
    """

    def __init__(self, stall_s: float, heartbeat_s: float | None = None, what: str = "decoding",
                 reports_position: bool = True):
        # reports_position=False: heartbeats say 0 s (the probe reads the whole file but decodes
        # nothing; its position would show the video as done on the progress bar).
        self.stall_s, self.heartbeat_s, self.what = stall_s, heartbeat_s, what
        self.reports_position = reports_position
        now = time.monotonic()
        self.last_progress_at = self.last_yield_at = now
        self.furthest_ts: float = float("-inf")
        self.furthest_pos = -1
        self.first_ts: float | None = None
        self.position_s = 0.0  # seconds into the video reached so far (from the first timestamp)

    def packet(self, packet: av.Packet, tb) -> None:
        """Note one demuxed packet; raise DecodeTimeout once nothing has moved for ``stall_s``."""
        ts = packet.pts if packet.pts is not None else packet.dts
        pos = packet.pos if packet.pos is not None and packet.pos >= 0 else None
        moved = ts is None and pos is None  # a packet with no position at all: count it
        if pos is not None and pos > self.furthest_pos:
            self.furthest_pos, moved = pos, True
        if ts is not None and ts > self.furthest_ts:
            self.furthest_ts, moved = ts, True
            if self.first_ts is None:
                self.first_ts = ts
            if tb is not None:
                self.position_s = max(self.position_s, float((ts - self.first_ts) * tb))
        now = time.monotonic()
        if moved:
            self.last_progress_at = now
        elif now - self.last_progress_at > self.stall_s:
            raise DecodeTimeout(f"{self.what} made no progress for {self.stall_s:g} s")

    def heartbeat(self) -> DecodeHeartbeat | None:
        """A heartbeat to yield now, if one is due."""
        if self.heartbeat_s is None or time.monotonic() - self.last_yield_at < self.heartbeat_s:
            return None
        return DecodeHeartbeat(self.position_s if self.reports_position else 0.0)

    def resumed(self) -> None:
        """Call after every yield: the consumer's time is not the decoder's."""
        self.last_progress_at = self.last_yield_at = time.monotonic()
