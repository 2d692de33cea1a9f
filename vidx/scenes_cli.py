"""``vidx scenes FILE`` (shot lists and exports) and ``vidx tags`` (tag counts and lookups).

Wired into ``vidx.cli`` by ``add_parsers(subparsers)``; handlers ``run_scenes`` and
``run_tags`` return an exit code and raise the CLI's one-line error types.
"""

from __future__ import annotations

import argparse
import os
import sys

from indexer import exports
from indexer.pathtext import display_path, from_stored

EXIT_OK = 0


def add_parsers(subparsers) -> None:
    """Register ``scenes`` and ``tags`` on the ``vidx`` sub-command parser."""
    from vidx.cli import _add_common

    p = subparsers.add_parser("scenes", help="shots of one video with timecodes, tags and thumbnails; exports",
                              description="List the shots of an indexed video, or export them for an editor "
                                          "(CSV, JSON, CMX3600 EDL, OpenTimelineIO).")
    p.add_argument("file", help="an indexed video (path, or its file name when unique in the index)")
    _add_common(p)
    p.add_argument("--format", choices=exports.FORMATS,
                   help="output format (default: from -o's extension, else table; --json means json)")
    p.add_argument("-o", "--output", help="write the export to this file instead of stdout")
    p.add_argument("--top-tags", type=int, default=5, dest="top_tags", help="tags per shot (default 5)")
    p.add_argument("--no-thumbnails", action="store_true", dest="no_thumbnails",
                   help="do not decode shot thumbnails nor draw the contact sheet")
    p.add_argument("--thumb-size", type=int, default=180, dest="thumb_size",
                   help="thumbnail shorter side in pixels (default 180)")
    p.set_defaults(handler=run_scenes)

    p = subparsers.add_parser("tags", help="tag counts across the archive, or the videos and shots with a tag",
                              description="Zero-shot tags in the index: counts per label, or with --label "
                                          "the videos and shots that carry it.")
    _add_common(p)
    p.add_argument("--vocabulary", help="only this vocabulary (actions, objects, scenes, or a custom one)")
    p.add_argument("--label", help="list the videos and shots with this tag (label or vocabulary:label)")
    p.add_argument("-n", type=int, default=50, help="at most this many rows (labels, or videos with --label)")
    p.add_argument("--min-score", type=float, default=0.0, dest="min_score",
                   help="count only tags scoring at least this (probability)")
    p.add_argument("--labels", metavar="FILE",
                   help="tag the indexed clips, shots and videos with this vocabulary file now (one label "
                        "per line, '#' comments; name = file stem); later 'vidx index' runs apply it too")
    p.set_defaults(handler=run_tags)


# -- vidx scenes ---------------------------------------------------------------------------------

def _resolve_format(args) -> str:
    if args.format:
        return args.format
    if args.output:
        fmt = exports.format_from_path(args.output)
        if fmt:
            return fmt
    return "json" if args.json and not args.output else "table"


def table_text(scenes: exports.VideoScenes) -> str:
    source = "detected shots" if scenes.shots_from == "shots" else "clips (indexed without shot detection)"
    n = len(scenes.shots)
    lines = [f"{display_path(scenes.path)}  {n} shot{'' if n == 1 else 's'} from {source}, {scenes.fps:.3f} fps, "
             f"{exports.timecode(scenes.n_frames, scenes.fps)}"]
    lines.append(f"{'shot':>4}  {'start':11}  {'end':11}  {'dur(s)':>7}  {'tags':32}  thumbnail")
    for s in scenes.shots:
        tags = ", ".join(s.labels()) or "-"
        lines.append(f"{s.idx + 1:>4}  {scenes.tc(s.start_frame)}  {scenes.tc(s.end_frame)}  "
                     f"{s.duration_s:7.3f}  {tags:32}  {s.thumbnail or '-'}")
    if scenes.contact_sheet:
        lines.append(f"contact sheet: {scenes.contact_sheet}")
    return "\n".join(lines) + "\n"


def run_scenes(args: argparse.Namespace) -> int:
    from indexer.config import ConfigError
    from indexer.store import IndexStore
    from vidx.cli import _print_json, _settings_from

    settings = _settings_from(args)
    fmt = _resolve_format(args)
    if args.top_tags < 0:
        raise ConfigError("--top-tags must be 0 or more")
    if args.thumb_size < 16:
        raise ConfigError("--thumb-size must be at least 16 pixels")
    with IndexStore(settings.index_dir, read_only=True) as store:
        scenes = exports.load_scenes(store.con, args.file, top_tags=args.top_tags)
        index_dir = store.index_dir
    if not args.no_thumbnails:
        exports.make_thumbnails(scenes, index_dir, short_side=args.thumb_size)
    text = table_text(scenes) if fmt == "table" else exports.render(scenes, fmt)
    if args.output:
        out = os.path.abspath(os.path.expanduser(args.output))
        try:
            tmp = f"{out}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
            os.replace(tmp, out)
        except OSError as exc:
            raise ConfigError(f"cannot write {out}: {exc.strerror}") from None
        if args.json:
            _print_json({"output": out, "format": fmt, "path": scenes.path, "shots": len(scenes.shots),
                         "contact_sheet": scenes.contact_sheet})
        else:
            print(f"wrote {out} ({fmt}, {len(scenes.shots)} shots of {display_path(scenes.path)})")
            if scenes.contact_sheet:
                print(f"contact sheet: {scenes.contact_sheet}")
        return EXIT_OK
    sys.stdout.write(text)
    return EXIT_OK


# -- vidx tags -----------------------------------------------------------------------------------

_COUNTS_SQL = """
WITH ct AS (SELECT t.vocabulary, t.label, t.clip_id, c.video_id FROM clip_tags t JOIN clips c USING (clip_id)
            WHERE t.score >= $min),
     st AS (SELECT t.vocabulary, t.label, t.shot_id, s.video_id FROM shot_tags t JOIN shots s USING (shot_id)
            WHERE t.score >= $min),
     vt AS (SELECT t.vocabulary, t.label, t.video_id FROM video_tags t JOIN videos v USING (video_id)
            WHERE t.score >= $min),
     anyv AS (SELECT vocabulary, label, video_id FROM ct UNION SELECT vocabulary, label, video_id FROM st
              UNION SELECT vocabulary, label, video_id FROM vt),
     c AS (SELECT vocabulary, label, count(DISTINCT clip_id) AS n FROM ct GROUP BY ALL),
     s AS (SELECT vocabulary, label, count(DISTINCT shot_id) AS n FROM st GROUP BY ALL),
     v AS (SELECT vocabulary, label, count(DISTINCT video_id) AS n FROM vt GROUP BY ALL),
     a AS (SELECT vocabulary, label, count(DISTINCT video_id) AS n FROM anyv GROUP BY ALL)
SELECT a.vocabulary, a.label, coalesce(c.n, 0), coalesce(s.n, 0), a.n, coalesce(v.n, 0)
FROM a LEFT JOIN c USING (vocabulary, label) LEFT JOIN s USING (vocabulary, label)
       LEFT JOIN v USING (vocabulary, label)
WHERE ($vocab IS NULL OR a.vocabulary = $vocab)
ORDER BY 3 DESC, 4 DESC, 5 DESC, a.vocabulary, a.label
"""


def tag_counts(con, vocabulary: str | None = None, min_score: float = 0.0, limit: int | None = None) -> list[dict]:
    """Per (vocabulary, label): clips, shots, videos (with it at any level) and video_tags
    (videos whose consensus carries it), most frequent first."""
    rows = con.execute(_COUNTS_SQL, {"min": float(min_score), "vocab": vocabulary}).fetchall()
    if limit is not None:
        rows = rows[:limit]
    return [{"vocabulary": r[0], "label": r[1], "clips": int(r[2]), "shots": int(r[3]), "videos": int(r[4]),
             "video_tags": int(r[5])} for r in rows]


def videos_with_tag(con, tag: str, vocabulary: str | None = None, min_score: float = 0.0,
                    limit: int | None = None) -> list[dict]:
    """Videos carrying ``tag`` (at clip, shot or video level), best first, with the shots and
    clips that carry it."""
    from indexer.tagging import parse_tag

    vocab, label = parse_tag(con, tag)
    vocab = vocab or vocabulary
    params = {"label": label, "vocab": vocab, "min": float(min_score)}
    cond = "lower(t.label) = lower($label) AND ($vocab IS NULL OR t.vocabulary = $vocab) AND t.score >= $min"
    videos = con.execute(
        "SELECT video_id, path, avg_fps, base_fps FROM videos WHERE status = 'indexed'").fetchall()
    info = {r[0]: r for r in videos}
    vt = con.execute(f"SELECT t.video_id, t.vocabulary, t.label, t.score FROM video_tags t WHERE {cond}",
                     params).fetchall()
    st = con.execute(
        f"SELECT s.video_id, s.idx, s.start_s, s.end_s, s.start_frame, s.end_frame, t.vocabulary, t.label, "
        f"t.score FROM shot_tags t JOIN shots s USING (shot_id) WHERE {cond} ORDER BY s.video_id, s.start_s",
        params).fetchall()
    ct = con.execute(
        f"SELECT c.video_id, c.clip_id, c.start_s, c.end_s, t.vocabulary, t.label, t.score FROM clip_tags t "
        f"JOIN clips c USING (clip_id) WHERE {cond} ORDER BY c.video_id, c.start_s", params).fetchall()
    out: dict[int, dict] = {}

    def entry(vid: int) -> dict | None:
        if vid not in info:
            return None
        if vid not in out:
            out[vid] = {"video_id": int(vid), "path": from_stored(info[vid][1]), "video_score": None, "best_score": 0.0,
                        "shots": [], "clips": []}
        return out[vid]

    for vid, voc, lab, score in vt:
        e = entry(vid)
        if e:
            e["video_score"] = max(e["video_score"] or 0.0, round(float(score), 4))
            e["best_score"] = max(e["best_score"], float(score))
            e.setdefault("labels", set()).add((voc, lab))
    for vid, idx, s0, s1, f0, f1, voc, lab, score in st:
        e = entry(vid)
        if e:
            fps = exports.timeline_rate(info[vid][2], info[vid][3])
            f0 = int(f0) if f0 is not None else round(s0 * fps)
            f1 = int(f1) if f1 is not None else round(s1 * fps)
            e["shots"].append({"shot": int(idx) + 1, "idx": int(idx), "start_s": round(float(s0), 3),
                               "end_s": round(float(s1), 3), "start_tc": exports.timecode(f0, fps),
                               "end_tc": exports.timecode(f1, fps), "vocabulary": voc, "label": lab,
                               "score": round(float(score), 4)})
            e["best_score"] = max(e["best_score"], float(score))
            e.setdefault("labels", set()).add((voc, lab))
    for vid, cid, s0, s1, voc, lab, score in ct:
        e = entry(vid)
        if e:
            e["clips"].append({"clip_id": int(cid), "start_s": round(float(s0), 3), "end_s": round(float(s1), 3),
                               "vocabulary": voc, "label": lab, "score": round(float(score), 4)})
            e["best_score"] = max(e["best_score"], float(score))
            e.setdefault("labels", set()).add((voc, lab))
    result = sorted(out.values(), key=lambda e: (-e["best_score"], e["path"]))
    for e in result:
        e["best_score"] = round(e["best_score"], 4)
        e["labels"] = [{"vocabulary": v, "label": lab} for v, lab in sorted(e.pop("labels", set()))]
    return result[:limit] if limit is not None else result


def apply_labels(index_dir: str, labels_file: str, threads: int = 0) -> dict:
    """Tag everything in the index with a custom vocabulary now; remember it for later runs."""
    from indexer.config import ConfigError
    from indexer.model import LoadedModel, resolve_model, warn_if_random_index
    from indexer.store import IndexStore, ModelMismatch, _one
    from indexer.tagging import (LabelBank, VocabularyError, Vocabulary, label_cache_dir, remember_vocabulary,
                                 tag_clips, tag_shots_and_videos)

    try:
        vocab = Vocabulary.from_file(labels_file)
    except VocabularyError as exc:
        raise ConfigError(str(exc)) from None
    with IndexStore(index_dir, read_only=True) as store:
        model_id = store.index_model()
        if model_id is None:
            raise ConfigError(f"index {store.index_dir} holds no vectors yet; run 'vidx index FOLDER' first")
        name, pretrained = _one(store.con.execute("SELECT name, pretrained FROM models WHERE model_id = ?",
                                                  [model_id]))
    warn_if_random_index(name, pretrained)
    spec = resolve_model(name, pretrained)
    if spec.model_id != model_id:
        raise ModelMismatch(f"the weights found for {name} ({pretrained}) are not the ones this index was "
                            f"built with ({model_id} vs {spec.model_id}); restore them to tag this index")
    model = LoadedModel(spec, threads=threads)
    with IndexStore(index_dir) as store:
        bank = LabelBank.build(model, [vocab], label_cache_dir())
        video_ids = [r[0] for r in store.con.execute(
            "SELECT video_id FROM videos WHERE status = 'indexed' ORDER BY video_id").fetchall()]
        with store.transaction():
            n_clip = tag_clips(store.con, bank, video_ids)
            n_shot, n_video = tag_shots_and_videos(store.con, bank, video_ids)
            remember_vocabulary(store.con, vocab)
    return {"vocabulary": vocab.name, "labels": len(vocab.labels), "threshold": vocab.threshold,
            "videos": len(video_ids), "clip_tags": n_clip, "shot_tags": n_shot, "video_tags": n_video}


def run_tags(args: argparse.Namespace) -> int:
    from indexer.config import ConfigError
    from indexer.store import IndexStore
    from vidx.cli import _print_json, _settings_from

    settings = _settings_from(args)
    if args.n < 1:
        raise ConfigError("-n must be at least 1")
    applied = None
    if args.labels:
        if args.label:
            raise ConfigError("give --labels FILE or --label L, not both")
        applied = apply_labels(settings.index_dir, args.labels, threads=settings.torch_threads)
        args.vocabulary = applied["vocabulary"]
        if not args.json:
            print(f"tagged {applied['videos']} videos with vocabulary '{applied['vocabulary']}' "
                  f"({applied['labels']} labels, threshold {applied['threshold']:g}): "
                  f"{applied['clip_tags']} clip, {applied['shot_tags']} shot, {applied['video_tags']} video tags")
    with IndexStore(settings.index_dir, read_only=True) as store:
        if args.label:
            videos = videos_with_tag(store.con, args.label, args.vocabulary, args.min_score, args.n)
            if args.json:
                _print_json({"label": args.label, "videos": videos})
                return EXIT_OK
            if not videos:
                print(f"no video has the tag '{args.label}'")
            for v in videos:
                whole = f"  video {v['video_score']:.2f}" if v["video_score"] is not None else ""
                print(f"{v['best_score']:.2f}  {display_path(v['path'])}{whole}  ({len(v['shots'])} shots, "
                      f"{len(v['clips'])} clips)")
                for s in v["shots"]:
                    print(f"      shot {s['shot']:>3}  {s['start_tc']}-{s['end_tc']}  {s['label']} "
                          f"({s['vocabulary']}) {s['score']:.2f}")
            return EXIT_OK
        counts = tag_counts(store.con, args.vocabulary, args.min_score, args.n)
    if args.json:
        _print_json({"applied": applied, "tags": counts} if applied else counts)
        return EXIT_OK
    if not counts:
        print("no tags in the index" + (f" for vocabulary '{args.vocabulary}'" if args.vocabulary else "")
              + "; tags are made while indexing, or with 'vidx tags --labels FILE'")
        return EXIT_OK
    print(f"{'vocabulary':12}  {'label':36}  {'clips':>6}  {'shots':>6}  {'videos':>6}")
    for c in counts:
        print(f"{c['vocabulary']:12}  {c['label']:36}  {c['clips']:>6}  {c['shots']:>6}  {c['videos']:>6}")
    return EXIT_OK
