"""Shot lists of one indexed video, for editors: CSV, JSON, CMX3600 EDL, OpenTimelineIO,
a JPEG thumbnail per shot and a contact sheet per video.

Shots come from the ``shots`` table; a video indexed before shot detection (no
shots rows) gets one "shot" per clip. Tags are the shot's consensus tags
(``shot_tags``), or, when it has none stored, the duration-weighted mean of its
clips' stored tag scores.

Frame numbers count frames at the video's frame rate from its first frame
(``end_frame`` exclusive, as in EDL out-points). Timecodes are non-drop-frame
``HH:MM:SS:FF`` at the nominal integer rate (``round(fps)``: 30 for 29.97), the
usual way EDLs label frames; OpenTimelineIO ranges use the exact rate.

Thumbnails are decoded at each shot's middle (shorter side ``short_side`` px,
sample aspect ratio and rotation applied as in ``indexer.decode``) and cached in
``<index>/thumbnails/<video_id>/shot_<idx>.jpg`` with ``contact_sheet.jpg`` beside
them; a manifest there notes what each file was made from, so a changed shot is
redrawn and an unchanged one is not.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.pathtext import (UNSTORABLE_NAME, display_path, from_stored, is_storable_path, shell_quote,
                              spellings, to_stored)
from indexer.store import IndexError_, _one

log = logging.getLogger(__name__)

THUMB_DIR = "thumbnails"
CONTACT_SHEET = "contact_sheet.jpg"
MANIFEST = "manifest.json"
FORMATS = ("table", "csv", "json", "edl", "otio")
_STANDARD_RATES = (24000 / 1001, 24.0, 25.0, 30000 / 1001, 30.0, 48.0, 50.0, 60000 / 1001, 60.0,
                   120.0, 15.0, 12.0, 12.5, 10.0)

Tag = tuple[str, str, float]


class NotIndexed(IndexError_):
    """The file asked about is not (or not successfully) in the index."""


# -- time ----------------------------------------------------------------------------------------

def timeline_rate(avg_fps: float | None, base_fps: float | None = None) -> float:
    """The frame rate exports count frames at: the average rate, snapped to the nearest
    standard rate when within 0.2% (29.97002997 -> 30000/1001, 24.99 -> 25)."""
    fps = avg_fps if avg_fps and avg_fps > 0 else (base_fps if base_fps and base_fps > 0 else 25.0)
    std = min(_STANDARD_RATES, key=lambda r: abs(fps - r) / r)
    return std if abs(fps - std) / std < 0.002 else float(fps)


def nominal_rate(fps: float) -> int:
    return max(1, int(math.floor(fps + 0.5)))


def timecode(frame: int, fps: float) -> str:
    """Non-drop-frame SMPTE timecode of a frame number at the nominal rate of ``fps``."""
    rate = nominal_rate(fps)
    frame = max(0, int(frame))
    total_s, ff = divmod(frame, rate)
    h, rem = divmod(total_s, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}:{ff:02d}"


# -- data ----------------------------------------------------------------------------------------

@dataclass
class Shot:
    idx: int  # 0-based position in the video
    start_s: float
    end_s: float
    start_frame: int
    end_frame: int  # exclusive
    transition: str | None = None
    tags: list[Tag] = field(default_factory=list)  # best first
    thumbnail: str | None = None
    shot_id: int | None = None  # None when a clip stands in for the shot

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def mid_s(self) -> float:
        return (self.start_s + self.end_s) / 2

    def labels(self) -> list[str]:
        return [t[1] for t in self.tags]


@dataclass
class VideoScenes:
    video_id: int
    path: str
    fps: float  # timeline rate (exact); timecodes use nominal_rate(fps)
    duration_s: float
    n_frames: int
    display_width: int
    display_height: int
    shots: list[Shot]
    shots_from: str  # "shots" (detected) or "clips" (index made without shot detection)
    contact_sheet: str | None = None

    @property
    def name(self) -> str:
        """The file name, printable (undecodable bytes as \\xNN)."""
        return display_path(os.path.basename(self.path))

    @property
    def stem(self) -> str:
        return display_path(Path(self.path).stem)

    def tc(self, frame: int) -> str:
        return timecode(frame, self.fps)


def find_video(con, path: str) -> tuple:
    """The indexed row of ``path`` (absolute, real path, or a unique file name)."""
    cols = ("video_id, path, duration_s, avg_fps, base_fps, n_frames, display_width, display_height, "
            "status, error")
    candidates = []
    full = os.path.abspath(os.path.expanduser(path))
    if not is_storable_path(full):
        raise NotIndexed(f"{display_path(path)} is not in the index: {UNSTORABLE_NAME}")
    for p in dict.fromkeys([*spellings(full), os.path.realpath(full)]):
        row = _one(con.execute(f"SELECT {cols} FROM videos WHERE path = ?", [to_stored(p)]))
        if row:
            candidates = [row]
            break
    if not candidates and os.sep not in path:
        for name in spellings(path):
            candidates = con.execute(
                f"SELECT {cols} FROM videos WHERE path LIKE ? ESCAPE '\\' ORDER BY path",
                ["%/" + to_stored(name).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")]).fetchall()
            if candidates:
                break
        if len(candidates) > 1:
            raise NotIndexed(f"{len(candidates)} indexed files are named {display_path(path)} "
                             f"({display_path(from_stored(candidates[0][1]))}, "
                             f"{display_path(from_stored(candidates[1][1]))}, ...); give the full path")
    if not candidates:
        raise NotIndexed(f"{display_path(path)} is not in the index; index it first "
                         f"('vidx index {shell_quote(path)}') or check the path")
    row = (candidates[0][0], from_stored(candidates[0][1]), *candidates[0][2:])
    if row[8] != "indexed":
        raise NotIndexed(f"{display_path(row[1])} is in the index but was {row[8]}: {row[9] or 'no reason recorded'}")
    return row


def load_scenes(con, path: str, top_tags: int = 5) -> VideoScenes:
    """Shots of the indexed video at ``path`` with their top tags (no thumbnails yet)."""
    video_id, vpath, duration_s, avg_fps, base_fps, n_frames, disp_w, disp_h, _, _ = find_video(con, path)
    fps = timeline_rate(avg_fps, base_fps)
    duration_s = float(duration_s or 0.0)
    n_frames = int(n_frames) if n_frames else int(round(duration_s * fps))

    def frame_of(t: float) -> int:
        return int(round(t * fps))

    rows = con.execute("SELECT shot_id, idx, start_s, end_s, start_frame, end_frame, transition FROM shots "
                       "WHERE video_id = ? ORDER BY start_s, idx", [video_id]).fetchall()
    if rows:
        shots = [Shot(idx=int(r[1]), start_s=float(r[2]), end_s=float(r[3]),
                      start_frame=int(r[4]) if r[4] is not None else frame_of(r[2]),
                      end_frame=int(r[5]) if r[5] is not None else frame_of(r[3]),
                      transition=r[6], shot_id=int(r[0])) for r in rows]
        shots_from = "shots"
        stored = con.execute(
            "SELECT t.shot_id, t.vocabulary, t.label, t.score FROM shot_tags t JOIN shots s USING (shot_id) "
            "WHERE s.video_id = ? ORDER BY t.shot_id, t.score DESC, t.label", [video_id]).fetchall()
        by_shot: dict[int, list[Tag]] = {}
        for sid, vocab, label, score in stored:
            by_shot.setdefault(int(sid), []).append((vocab, label, float(score)))
        for shot in shots:
            shot.tags = by_shot.get(shot.shot_id, [])[:top_tags]
    else:
        clips = con.execute("SELECT idx, start_s, end_s FROM clips WHERE video_id = ? ORDER BY start_s, idx",
                            [video_id]).fetchall()
        shots = [Shot(idx=i, start_s=float(s), end_s=float(e), start_frame=frame_of(s), end_frame=frame_of(e))
                 for i, (_, s, e) in enumerate(clips)]
        shots_from = "clips"
    missing = [s for s in shots if not s.tags]
    if missing:
        _tags_from_clips(con, video_id, missing, top_tags)
    return VideoScenes(video_id=int(video_id), path=vpath, fps=fps, duration_s=duration_s, n_frames=n_frames,
                       display_width=int(disp_w or 0), display_height=int(disp_h or 0), shots=shots,
                       shots_from=shots_from)


def _tags_from_clips(con, video_id: int, shots: list[Shot], top_tags: int) -> None:
    """Tags of shots with none stored: duration-weighted mean of their clips' tag scores."""
    rows = con.execute("SELECT c.clip_id, c.start_s, c.end_s, t.vocabulary, t.label, t.score FROM clips c "
                       "LEFT JOIN clip_tags t USING (clip_id) WHERE c.video_id = ?", [video_id]).fetchall()
    if not rows:
        return
    clips: dict[int, tuple[float, float]] = {}
    scores: dict[int, list[tuple[str, str, float]]] = {}
    for cid, s, e, vocab, label, score in rows:
        clips[cid] = (float(s), float(e))
        if label is not None:
            scores.setdefault(cid, []).append((vocab, label, float(score)))
    by_mid = sorted(clips, key=lambda c: sum(clips[c]))
    mids = [sum(clips[c]) / 2 for c in by_mid]
    for shot in shots:
        inside = by_mid[bisect.bisect_left(mids, shot.start_s):bisect.bisect_left(mids, shot.end_s)]
        total = sum(clips[c][1] - clips[c][0] for c in inside)
        if not inside or total <= 0:
            continue
        acc: dict[tuple[str, str], float] = {}
        for cid in inside:
            w = (clips[cid][1] - clips[cid][0]) / total
            for vocab, label, score in scores.get(cid, []):
                acc[(vocab, label)] = acc.get((vocab, label), 0.0) + w * score
        best = sorted(acc.items(), key=lambda kv: (-kv[1], kv[0][1]))[:top_tags]
        shot.tags = [(v, lab, sc) for (v, lab), sc in best]


# -- thumbnails ------------------------------------------------------------------------------------

def grab_frames(path: str, times_s: list[float], short_side: int = 180, probe=None,
                timeout_s: float = 60.0) -> list[np.ndarray | None]:
    """RGB frames (shorter display side ``short_side``) nearest each time, seeking between
    far-apart times; None where no frame could be read."""
    import av

    from indexer.decode import target_size
    from indexer.probe import open_container, probe_video

    probe = probe or probe_video(path)
    size = target_size(probe, short_side)
    out: list[np.ndarray | None] = [None] * len(times_s)
    if not times_s:
        return out
    deadline = time.monotonic() + timeout_s
    t0 = probe.start_time_s
    frame_s = 1.0 / probe.avg_fps if probe.avg_fps else 0.04
    order = sorted(range(len(times_s)), key=lambda i: times_s[i])

    def convert(frame) -> np.ndarray:
        rgb = frame.to_ndarray(width=size[0], height=size[1], format="rgb24", interpolation="BICUBIC")
        if probe.rotation_deg:
            rgb = np.ascontiguousarray(np.rot90(rgb, k=probe.rotation_deg // 90))
        return rgb

    container = open_container(path)
    try:
        stream = next(s for s in container.streams.video if s.index == probe.video_stream_index)
        tb = stream.time_base
        frames = None
        before = cur = None  # (time, frame): the last two decoded frames
        exhausted = False

        def restart(at_s: float) -> None:
            nonlocal frames, before, cur, exhausted
            at_s = max(0.0, at_s)
            try:
                if at_s <= 0 or tb is None:
                    container.seek(0)
                else:
                    container.seek(int((at_s + t0) / tb), stream=stream, backward=True)
            except (av.error.FFmpegError, OSError):
                container.seek(0)
            frames = container.decode(stream)
            before = cur = None
            exhausted = False

        def advance() -> bool:
            nonlocal before, cur, exhausted
            errors = 0
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    exhausted = True
                    return False
                except av.error.FFmpegError:
                    errors += 1
                    if errors > 50:
                        exhausted = True
                        return False
                    continue
                t = (frame.time - t0) if frame.time is not None else (cur[0] + frame_s if cur else 0.0)
                before, cur = cur, (t, frame)
                return True

        for i in order:
            if time.monotonic() > deadline:
                log.warning("thumbnails of %s: time bound reached, %d left without", path,
                            sum(o is None for o in out))
                break
            target = times_s[i]
            if frames is None or cur is None or target < cur[0] - 1e-6 or target - cur[0] > 4.0:
                restart(target)
                advance()
                for back in (5.0, None):  # an imprecise seek can land late: back off, then from 0
                    if cur is not None and cur[0] <= target + frame_s:
                        break
                    restart(target - back if back is not None else 0.0)
                    advance()
            while cur is not None and cur[0] < target - 1e-6 and not exhausted:
                if not advance():
                    break
            pick = cur
            if before is not None and cur is not None and abs(before[0] - target) < abs(cur[0] - target):
                pick = before
            if pick is not None:
                out[i] = convert(pick[1])
    finally:
        container.close()
    return out


def _write_jpeg(img, path: str, quality: int = 85) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    img.save(tmp, format="JPEG", quality=quality)
    os.replace(tmp, path)


def thumbnail_dir(index_dir: str, video_id: int) -> str:
    return os.path.join(index_dir, THUMB_DIR, str(int(video_id)))


def make_thumbnails(scenes: VideoScenes, index_dir: str, short_side: int = 180, force: bool = False,
                    contact_sheet: bool = True) -> int:
    """Write (or reuse) one JPEG per shot and the contact sheet; fills ``shot.thumbnail`` and
    ``scenes.contact_sheet``. Returns the number of thumbnails decoded. A file that cannot be
    read or a folder that cannot be written leaves the paths None, with a warning."""
    from PIL import Image

    folder = thumbnail_dir(index_dir, scenes.video_id)
    manifest_path = os.path.join(folder, MANIFEST)
    try:
        with open(manifest_path) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        manifest = {}
    if manifest.get("path") != scenes.path or manifest.get("short_side") != short_side:
        manifest = {"path": scenes.path, "short_side": short_side, "shots": {}}
    made = manifest.setdefault("shots", {})
    todo = []
    for shot in scenes.shots:
        file = os.path.join(folder, f"shot_{shot.idx}.jpg")
        key = [round(shot.start_s, 4), round(shot.end_s, 4)]
        if not force and made.get(str(shot.idx)) == key and os.path.exists(file):
            shot.thumbnail = file
        else:
            todo.append((shot, file, key))
    decoded = 0
    if todo:
        try:
            os.makedirs(folder, exist_ok=True)
            frames = grab_frames(scenes.path, [s.mid_s for s, _, _ in todo], short_side)
        except Exception as exc:  # a moved, changed or damaged file: list the shots anyway
            log.warning("no thumbnails for %s: %s", scenes.path, getattr(exc, "reason", None) or exc)
            frames = [None] * len(todo)
        for (shot, file, key), rgb in zip(todo, frames):
            if rgb is None:
                shot.thumbnail = None
                made.pop(str(shot.idx), None)
                continue
            try:
                _write_jpeg(Image.fromarray(rgb), file)
            except OSError as exc:
                log.warning("cannot write thumbnail %s: %s", file, exc)
                continue
            shot.thumbnail = file
            made[str(shot.idx)] = key
            decoded += 1
    sheet = os.path.join(folder, CONTACT_SHEET)
    if contact_sheet and any(s.thumbnail for s in scenes.shots):
        want = [[s.idx, s.thumbnail is not None, ", ".join(s.labels()[:3])] for s in scenes.shots]
        if force or decoded or manifest.get("sheet") != want or not os.path.exists(sheet):
            try:
                _write_jpeg(render_contact_sheet(scenes), sheet)
                manifest["sheet"] = want
            except OSError as exc:
                log.warning("cannot write contact sheet %s: %s", sheet, exc)
                sheet = None
        scenes.contact_sheet = sheet
    if os.path.isdir(folder):
        try:
            tmp = manifest_path + f".{os.getpid()}.tmp"
            with open(tmp, "w") as fh:
                json.dump(manifest, fh)
            os.replace(tmp, manifest_path)
        except OSError:
            pass
    return decoded


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def contact_sheet_layout(n: int, thumb_w: int, thumb_h: int, columns: int = 5, tile_w: int = 240,
                         pad: int = 8, caption_h: int = 34, header_h: int = 30) -> dict:
    """Geometry of the contact sheet: tile size, grid, and the image size."""
    cols = max(1, min(columns, n))
    rows = max(1, math.ceil(n / cols))
    tile_h = max(1, round(tile_w * thumb_h / max(thumb_w, 1)))
    cell_h = tile_h + caption_h
    height = header_h + pad + rows * (cell_h + pad)
    if height > 60000:  # JPEG's limit is 65535 px: shrink the tiles of very long videos
        scale = 60000 / height
        return contact_sheet_layout(n, thumb_w, thumb_h, columns, max(16, int(tile_w * scale)), pad,
                                    caption_h, header_h)
    return {"cols": cols, "rows": rows, "tile_w": tile_w, "tile_h": tile_h, "pad": pad,
            "caption_h": caption_h, "header_h": header_h,
            "width": pad + cols * (tile_w + pad), "height": height}


def render_contact_sheet(scenes: VideoScenes, columns: int = 5, tile_w: int = 240):
    """A PIL image: the shot thumbnails in a grid, each with its number, timecode and tags."""
    from PIL import Image, ImageDraw

    first = next(s.thumbnail for s in scenes.shots if s.thumbnail)
    with Image.open(first) as im:
        tw, th = im.size
    lay = contact_sheet_layout(len(scenes.shots), tw, th, columns, tile_w)
    sheet = Image.new("RGB", (lay["width"], lay["height"]), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    big, small = _font(16), _font(12)
    draw.text((lay["pad"], 6), f"{scenes.name}  {len(scenes.shots)} shots  "
              f"{timecode(scenes.n_frames, scenes.fps)}  {scenes.fps:.3f} fps", fill=(235, 235, 235), font=big)
    for n, shot in enumerate(scenes.shots):
        r, c = divmod(n, lay["cols"])
        x = lay["pad"] + c * (lay["tile_w"] + lay["pad"])
        y = lay["header_h"] + lay["pad"] + r * (lay["tile_h"] + lay["caption_h"] + lay["pad"])
        if shot.thumbnail:
            with Image.open(shot.thumbnail) as im:
                tile = im.convert("RGB").resize((lay["tile_w"], lay["tile_h"]), Image.BILINEAR)
            sheet.paste(tile, (x, y))
        else:
            draw.rectangle([x, y, x + lay["tile_w"] - 1, y + lay["tile_h"] - 1], fill=(70, 70, 70))
        draw.text((x + 2, y + lay["tile_h"] + 2),
                  f"#{shot.idx + 1}  {timecode(shot.start_frame, scenes.fps)}", fill=(235, 235, 235), font=small)
        tags = ", ".join(shot.labels()[:3])
        if tags:
            if draw.textlength(tags, font=small) > lay["tile_w"] - 4:
                while tags and draw.textlength(tags + "...", font=small) > lay["tile_w"] - 4:
                    tags = tags[:-1]
                tags = tags.rstrip(", ") + "..."
            draw.text((x + 2, y + lay["tile_h"] + 17), tags, fill=(180, 200, 255), font=small)
    return sheet


# -- formats ---------------------------------------------------------------------------------------

CSV_COLUMNS = ("shot", "start_s", "end_s", "duration_s", "start_tc", "end_tc", "start_frame", "end_frame",
               "transition", "tags", "tag_scores", "thumbnail")


def shot_dict(scenes: VideoScenes, shot: Shot) -> dict:
    return {
        "shot": shot.idx + 1, "idx": shot.idx, "start_s": round(shot.start_s, 4), "end_s": round(shot.end_s, 4),
        "duration_s": round(shot.duration_s, 4), "start_tc": scenes.tc(shot.start_frame),
        "end_tc": scenes.tc(shot.end_frame), "start_frame": shot.start_frame, "end_frame": shot.end_frame,
        "transition": shot.transition,
        "tags": [{"vocabulary": v, "label": lab, "score": round(s, 4)} for v, lab, s in shot.tags],
        "thumbnail": shot.thumbnail,
    }


def to_json(scenes: VideoScenes) -> dict:
    return {
        "path": scenes.path, "video_id": scenes.video_id, "fps": scenes.fps,
        "timecode_rate": nominal_rate(scenes.fps), "duration_s": scenes.duration_s, "n_frames": scenes.n_frames,
        "shots_from": scenes.shots_from, "contact_sheet": scenes.contact_sheet,
        "shots": [shot_dict(scenes, s) for s in scenes.shots],
    }


def to_csv(scenes: VideoScenes) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for shot in scenes.shots:
        d = shot_dict(scenes, shot)
        writer.writerow([d["shot"], f"{shot.start_s:.3f}", f"{shot.end_s:.3f}", f"{shot.duration_s:.3f}",
                         d["start_tc"], d["end_tc"], shot.start_frame, shot.end_frame, shot.transition or "",
                         "; ".join(shot.labels()),
                         "; ".join(f"{v}:{lab}={s:.3f}" for v, lab, s in shot.tags), shot.thumbnail or ""])
    return buf.getvalue()


def _edl_text(text: str) -> str:
    return " ".join(str(text).split())  # one line, no tabs


def to_edl(scenes: VideoScenes, title: str | None = None) -> str:
    """CMX3600 EDL: one video event per shot (reel AX, source = the file), record timecode
    equal to source timecode; per event a FROM CLIP NAME, a LOC marker with the tags, and a
    COMMENT with the tags and their scores."""
    title = _edl_text(title or scenes.stem)[:70]
    lines = [f"TITLE: {title}", "FCM: NON-DROP FRAME", ""]
    for n, shot in enumerate(scenes.shots, 1):
        src_in, src_out = scenes.tc(shot.start_frame), scenes.tc(shot.end_frame)
        lines.append(f"{n:03d}  AX       V     C        {src_in} {src_out} {src_in} {src_out}")
        lines.append(f"* FROM CLIP NAME: {_edl_text(scenes.name)}")
        labels = ", ".join(shot.labels())
        lines.append(f"* LOC: {src_in} GREEN   {_edl_text(labels) if labels else f'shot {shot.idx + 1}'}")
        scored = ", ".join(f"{lab} ({v} {s:.2f})" for v, lab, s in shot.tags) or "none"
        lines.append(f"* COMMENT: SHOT {shot.idx + 1} TAGS: {_edl_text(scored)}")
        lines.append("")
    return "\n".join(lines)


def to_otio(scenes: VideoScenes):
    """An OpenTimelineIO timeline: one video track, one clip per shot referencing the file
    (ExternalReference with the file's available range), one marker per shot spanning it,
    named by its tags, with the tags and scores in ``metadata['vidx']``."""
    import opentimelineio as otio

    rate = scenes.fps
    RT, TR = otio.opentime.RationalTime, otio.opentime.TimeRange
    timeline = otio.schema.Timeline(name=scenes.stem, global_start_time=RT(0, rate))
    # OTIO keeps UTF-8 text; the exact file is target_url (percent-encoded bytes).
    timeline.metadata["vidx"] = {"path": display_path(scenes.path), "video_id": scenes.video_id, "fps": rate,
                                 "shots_from": scenes.shots_from, "contact_sheet": scenes.contact_sheet}
    track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    timeline.tracks.append(track)
    available = TR(RT(0, rate), RT(max(scenes.n_frames, max((s.end_frame for s in scenes.shots), default=0)), rate))
    url = Path(scenes.path).as_uri()
    position = 0
    for shot in scenes.shots:
        if shot.start_frame > position:  # keep each shot at its own time in the timeline
            track.append(otio.schema.Gap(source_range=TR(RT(0, rate), RT(shot.start_frame - position, rate))))
        length = max(1, shot.end_frame - shot.start_frame)
        rng = TR(RT(shot.start_frame, rate), RT(length, rate))
        tags = [{"vocabulary": v, "label": lab, "score": round(s, 4)} for v, lab, s in shot.tags]
        clip = otio.schema.Clip(
            name=f"{scenes.stem} shot {shot.idx + 1}",
            media_reference=otio.schema.ExternalReference(target_url=url, available_range=available),
            source_range=rng)
        clip.metadata["vidx"] = {"shot": shot.idx + 1, "start_s": shot.start_s, "end_s": shot.end_s,
                                 "transition": shot.transition, "tags": tags, "thumbnail": shot.thumbnail}
        marker = otio.schema.Marker(name=", ".join(shot.labels()) or f"shot {shot.idx + 1}", marked_range=rng,
                                    color=otio.schema.MarkerColor.GREEN)
        marker.metadata["vidx"] = {"shot": shot.idx + 1, "tags": tags, "thumbnail": shot.thumbnail}
        clip.markers.append(marker)
        track.append(clip)
        position = shot.start_frame + length
    return timeline


def render(scenes: VideoScenes, fmt: str) -> str:
    """The export as text: csv, json, edl or otio (OTIO JSON)."""
    if fmt == "csv":
        return to_csv(scenes)
    if fmt == "json":
        return json.dumps(to_json(scenes), indent=2) + "\n"
    if fmt == "edl":
        return to_edl(scenes)
    if fmt == "otio":
        return to_otio(scenes).to_json_string() + "\n"
    raise ValueError(f"unknown format '{fmt}'; choose from {', '.join(FORMATS[1:])}")


def format_from_path(path: str) -> str | None:
    ext = Path(path).suffix.lower().lstrip(".")
    return ext if ext in ("csv", "json", "edl", "otio") else None


def write_export(scenes: VideoScenes, fmt: str, out: str) -> str:
    """Write the export to ``out`` atomically; returns the path."""
    text = render(scenes, fmt)
    out = os.path.abspath(os.path.expanduser(out))
    tmp = f"{out}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, out)
    return out
