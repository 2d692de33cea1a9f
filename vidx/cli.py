"""The ``vidx`` command: parse, build settings, call one library function, print.

Results go to stdout (``--json`` for machines); logs, warnings and progress to
stderr. Exit codes: 0 success (bad files are data, not errors), 1 systemic
failure (no weights, locked or mismatched index), 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any

from indexer.config import DEFAULTS, PRECISIONS, ConfigError, Settings, load_settings
from indexer.pathtext import display_path

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="index directory (env VIDX_DB; default: %s)" % "$XDG_DATA_HOME/vidx/index")
    p.add_argument("--config", help="TOML config file (env VIDX_CONFIG; default $XDG_CONFIG_HOME/vidx/config.toml)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help=f"open_clip architecture (default {DEFAULTS.model})")
    p.add_argument("--pretrained", help=f"pretrained tag, checkpoint file or folder, or 'random' "
                                        f"(default {DEFAULTS.pretrained})")


class _VersionAction(argparse.Action):
    """``--version``, looked up only when asked (importlib.metadata costs ~35 ms per start)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("vidx")
        except PackageNotFoundError:  # run from a checkout without installing
            text = "(not installed)"
        print(f"vidx {text}")  # stdout, as argparse's own version action does
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidx", description="Batch video indexing and search.")
    parser.add_argument("--version", action=_VersionAction, help="show vidx's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index video files and folders (incremental, resumable)")
    p.add_argument("paths", nargs="+", help="files and folders to index (recursive)")
    _add_common(p)
    _add_model(p)
    p.add_argument("--clip-s", type=float, dest="clip_s", help=f"clip length in seconds (default {DEFAULTS.clip_s})")
    p.add_argument("--snippets", type=int, help=f"TSN snippets per clip (default {DEFAULTS.snippets})")
    p.add_argument("--sampling", choices=("exact", "keyframe"), help="snippet frames: exact centre or nearest keyframe")
    p.add_argument("--no-shots", action="store_const", const=False, dest="shots",
                   help="do not detect shots (clips on a fixed grid; allows keyframe-only decoding)")
    p.add_argument("--shot-threshold", type=float, dest="shot_threshold")
    p.add_argument("--shot-frames", choices=("reference", "all"), dest="shot_frames",
                   help="frames the shot detector decodes: reference (default, cheaper) or all")
    p.add_argument("--no-tags", action="store_const", const=False, dest="tags", help="do not compute zero-shot tags")
    p.add_argument("--labels", action="append", metavar="FILE",
                   help="extra tag vocabulary file (one label per line; repeatable)")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--embed-workers", type=int, dest="embed_workers")
    p.add_argument("--decode-workers", type=int, dest="decode_workers")
    p.add_argument("--torch-threads", type=int, dest="torch_threads")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="image model precision (default auto: bf16 on CPUs with native bfloat16, else fp32)")
    p.add_argument("--decode-timeout-s", type=float, dest="decode_timeout_s",
                   help=f"stop a decode that makes no progress for this long (default {DEFAULTS.decode_timeout_s:g}; "
                        "slow files that keep moving are not stopped)")
    p.add_argument("--checkpoint-s", type=float, dest="checkpoint_s",
                   help=f"save a long video's finished clips this often, so a kill loses at most that much "
                        f"of it (default {DEFAULTS.checkpoint_s:g}; 0: off)")
    p.add_argument("--ray-address", dest="ray_address", help="join a Ray cluster ('auto' or host:port)")
    p.add_argument("--executor", choices=("ray", "local"),
                   help="ray (default) or local: the same stages in this process without Ray (one machine)")
    p.add_argument("--include-hidden", action="store_const", const=True, dest="include_hidden")
    p.add_argument("--retry-failed", action="store_true", help="try files that failed before again")
    p.add_argument("--reset", action="store_true", help="empty the index first (e.g. to change model)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("search", help="find moments by text, image or example")
    p.add_argument("query", nargs="?", help='what to look for, e.g. "a cat playing with a ball"')
    _add_common(p)
    _add_model(p)
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--min-score", type=float, dest="min_score", help="drop results scoring below this")
    p.add_argument("--per-video", type=int, default=2, dest="per_video",
                   help="at most this many moments per video (default 2)")
    p.add_argument("--group", choices=("clip", "video"), default="clip", help="rank moments or whole videos")
    p.add_argument("--no-merge", action="store_true", help="do not merge adjacent matching clips")
    p.add_argument("--image", help="query by an example image file")
    p.add_argument("--like", metavar="FILE@TIME", help="more like the moment at TIME (s or HH:MM:SS) of FILE")
    p.add_argument("--path", dest="path_glob", help="only files matching this glob (full path or name)")
    p.add_argument("--under", dest="path_prefix", help="only files under this folder")
    p.add_argument("--min-duration", type=float, dest="min_duration_s", help="only videos at least this long (s)")
    p.add_argument("--max-duration", type=float, dest="max_duration_s", help="only videos at most this long (s)")
    p.add_argument("--modified-since", dest="modified_since", help="only files modified since (YYYY-MM-DD[THH:MM])")
    p.add_argument("--indexed-since", dest="indexed_since", help="only files indexed since (YYYY-MM-DD[THH:MM])")
    p.add_argument("--tag", action="append", dest="tags", help="only moments with this tag (repeatable)")
    p.add_argument("--player", choices=("ffplay", "mpv"), default="ffplay", help="player of the play command")

    p = sub.add_parser("rebuild-vectors", help="rebuild the FAISS index from DuckDB (exact or IVF by size)")
    _add_common(p)
    p.add_argument("--type", choices=("auto", "flat", "ivf"), default="auto",
                   help="index type: auto chooses by size (ann_threshold)")

    p = sub.add_parser("status", help="what the index holds, and the files that failed")
    _add_common(p)

    p = sub.add_parser("config", help="show the effective settings and where defaults come from")
    _add_common(p)

    from vidx import moderate_cli
    from vidx.scenes_cli import add_parsers as add_scene_parsers

    add_scene_parsers(sub)
    moderate_cli.add_parser(sub)
    return parser


_SETTING_NAMES = {f.name for f in dataclasses.fields(Settings)}


def _settings_from(args: argparse.Namespace) -> Settings:
    cli = {k: v for k, v in vars(args).items() if k in _SETTING_NAMES and v is not None}
    if isinstance(cli.get("labels"), list):
        cli["labels"] = os.pathsep.join(os.path.abspath(p) for p in cli["labels"])
    return load_settings(cli, config_path=args.config)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _fmt_duration(seconds: float) -> str:
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


FAILURES_SHOWN = 20  # an archive with thousands of bad files must not bury the summary


def _print_failures(failures: list[dict]) -> None:
    for f in failures[:FAILURES_SHOWN]:
        print(f"  {f['status']}: {display_path(f['path'])}: {f['reason']}")
    rest = failures[FAILURES_SHOWN:]
    if rest:
        counts: dict[str, int] = {}
        for f in rest:
            counts[f["status"]] = counts.get(f["status"], 0) + 1
        kinds = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        print(f"  ... and {len(rest)} more ({kinds}); 'vidx status --json' lists them all")


def cmd_index(args: argparse.Namespace) -> int:
    from pipelines.index import index_paths

    settings = _settings_from(args)
    summary = index_paths(args.paths, settings, retry_failed=args.retry_failed, reset=args.reset,
                          show_progress=not args.no_progress and not args.json)
    if args.json:
        _print_json(summary.as_dict())
    else:
        s = summary
        print(f"index {s.index_dir}  (model {s.model_id})")
        print(f"  indexed {s.indexed}, unchanged {s.unchanged}, renamed/moved {s.renamed}, copies {s.copied}, "
              f"deleted {s.deleted}, failed {s.failed}, skipped {s.skipped}")
        print(f"  {s.clips_added} clips, {s.frames_embedded} frames embedded, "
              f"{s.video_seconds / 3600:.3f} video hours in {_fmt_duration(s.wall_s)} wall "
              f"({s.times_realtime:.1f}x realtime)")
        if s.resumed:
            print(f"  {s.resumed} video(s) resumed where an interrupted run stopped: {s.clips_resumed} saved clips "
                  f"were not embedded again")
        if s.reader_wait_s >= 1.0:
            print(f"  waited {s.reader_wait_s:.1f} s in all for searches / 'vidx status' to let go of the index")
        _print_failures(s.failures)
        if s.failed_before:
            print(f"  {s.failed_before} unchanged file(s) failed in an earlier run and were not tried again "
                  f"('vidx status' lists why; --retry-failed tries them again)")
        if s.status == "interrupted":
            print("  interrupted: finished videos are saved, and the finished clips of long ones; run the same "
                  "command again to continue")
    rc = EXIT_INTERRUPTED if summary.status == "interrupted" else EXIT_OK
    if settings.executor == "local":  # a decode thread left behind by a hung file must not abort the exit
        from pipelines.local import exit_without_finalizing_if_decoders_alive

        rc = exit_without_finalizing_if_decoders_alive(rc)
    return rc


def _score_text(score: float) -> str:
    """A score with 3 decimals; never "-0.000" (a tiny negative cosine reads as zero)."""
    text = f"{score:.3f}"
    return "0.000" if text == "-0.000" else text


def _parse_time_of_day(text: str) -> float:
    """Seconds from '12.5', '1:02.5' or '01:02:03.250'."""
    parts = text.split(":")
    try:
        seconds = 0.0
        for part in parts:
            seconds = seconds * 60 + float(part)
    except ValueError:
        raise ConfigError(f"cannot read time '{text}'; use seconds (12.5) or HH:MM:SS(.mmm)") from None
    return seconds


def _parse_date(text: str | None, option: str):
    if text is None:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{option}: cannot read date '{text}'; use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None


def cmd_search(args: argparse.Namespace) -> int:
    from search import Filters, Searcher

    settings = _settings_from(args)
    given = sum(x is not None for x in (args.query, args.image, args.like))
    if given != 1:
        raise ConfigError("give exactly one of: a text query, --image FILE, --like FILE@TIME")
    filters = Filters(path_glob=args.path_glob, path_prefix=args.path_prefix,
                      min_duration_s=args.min_duration_s, max_duration_s=args.max_duration_s,
                      modified_since=_parse_date(args.modified_since, "--modified-since"),
                      indexed_since=_parse_date(args.indexed_since, "--indexed-since"),
                      tags=tuple(args.tags or ()))
    searcher = Searcher(settings.index_dir, model=args.model, pretrained=args.pretrained,
                        threads=settings.torch_threads)
    options = dict(k=args.k, filters=filters, per_video=args.per_video, min_score=args.min_score,
                   merge=not args.no_merge, group=args.group)
    if args.query is not None:
        hits = searcher.search(args.query, **options)
    elif args.image is not None:
        hits = searcher.search_image(args.image, **options)
    else:
        file, sep, when = args.like.rpartition("@")
        if not sep or not file:
            raise ConfigError("--like takes FILE@TIME, e.g. --like clip.mp4@12.5")
        hits = searcher.search_like(file, _parse_time_of_day(when), **options)
    if args.json:
        _print_json([h.as_dict(args.player) for h in hits])
        return EXIT_OK
    if not hits:
        print("no results" + (" (the filters leave nothing to search)" if filters.active else ""))
    for rank, hit in enumerate(hits, 1):
        d = hit.as_dict(args.player)
        tags = f"  [{', '.join(hit.tags)}]" if hit.tags else ""
        print(f"{rank:3d}  {_score_text(hit.score)}  {display_path(hit.path)}  {d['start']}-{d['end']} "
              f"({hit.start_s:.3f}-{hit.end_s:.3f} s){tags}")
        print(f"       {d['play']}")
    return EXIT_OK


def cmd_rebuild_vectors(args: argparse.Namespace) -> int:
    from indexer import ann
    from indexer.store import IndexStore

    settings = _settings_from(args)
    with IndexStore(settings.index_dir) as store:
        if store.index_model() is None:
            raise ConfigError(f"index {settings.index_dir} holds no vectors yet; run 'vidx index FOLDER' first")
        report = ann.rebuild(store, None if args.type == "auto" else args.type, settings)
    if args.json:
        _print_json(report)
    else:
        print(f"rebuilt {report.get('type')} index of {report.get('n')} vectors in {report.get('build_s', 0):.1f} s"
              + (f"; nlist {report['nlist']}, nprobe {report['nprobe']}, tuned recall@10 "
                 f"{report.get('tuned_recall')}" if report.get("nlist") else ""))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from indexer.store import IndexStore

    settings = _settings_from(args)
    with IndexStore(settings.index_dir, read_only=True) as store:
        status = store.status()
    if args.json:
        _print_json(status)
        return EXIT_OK
    v = status["videos"]
    print(f"index {status['index_dir']}")
    print(f"  model      {status['model_id']}")
    print(f"  videos     {v['indexed']} indexed, {v['failed']} failed, {v['skipped']} skipped")
    print(f"  clips      {status['clips']} ({status['video_hours']:.3f} video hours)")
    faiss, writer = status["faiss"], status["writer"]
    if faiss["in_sync"]:
        faiss_text = f"FAISS {faiss['type']} in sync"
    elif writer:  # a running index writes the FAISS file every faiss_flush_s, DuckDB every batch
        faiss_text = (f"FAISS {faiss['type'] or 'not written yet'}, {faiss['ntotal'] or 0} of {status['clips']} "
                      f"clips (written every {settings.faiss_flush_s:g} s while indexing; searches add the "
                      f"newest clips from DuckDB)")
    else:
        faiss_text = f"FAISS {faiss['type']} OUT OF SYNC (rebuilt on next use)"
    print(f"  size       {status['index_bytes'] / 1e6:.1f} MB; {faiss_text}")
    if status["last_run"]:
        r = status["last_run"]
        started = str(r["started_at"])[:19]
        if r["status"] == "running" and writer:
            print(f"  last run   #{r['run_id']} {r['kind']} running since {started} ({writer})")
        elif r["status"] == "running":
            print(f"  last run   #{r['run_id']} {r['kind']} started {started} and stopped without finishing "
                  f"(its process is gone); committed videos are kept: run the same 'vidx index' again to go on")
        else:
            print(f"  last run   #{r['run_id']} {r['kind']} {r['status']} at {started}")
    elif writer:
        print(f"  writer     {writer}")
    if status["partial"]:
        if writer:
            print(f"  partial    {len(status['partial'])} video(s) being indexed, with their finished clips saved:")
        else:
            print(f"  partial    {len(status['partial'])} video(s) stopped part way with their finished clips saved; "
                  f"the next 'vidx index' of them goes on from there:")
        for p in status["partial"]:
            print(f"    {display_path(p['path'])}  ({p['clips']} clips saved)")
    _print_failures(status["failures"])
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    settings = _settings_from(args)
    data = {f.name: getattr(settings, f.name) for f in dataclasses.fields(Settings)}
    data["index_dir"] = settings.index_dir
    if args.json:
        _print_json(data)
    else:
        for k, v in data.items():
            default = getattr(DEFAULTS, k, None)
            mark = "" if k == "index_dir" or v == default else "   (changed)"
            print(f"{k:18} {v!r}{mark}")
    return EXIT_OK


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="vidx: %(asctime)s %(levelname)s: %(message)s" if verbose else "vidx: %(levelname)s: %(message)s")
    for noisy in ("ray", "filelock", "urllib3", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main(argv: list[str] | None = None) -> int:
    # Paths are shown with display_path(); should one with undecodable bytes slip through, print
    # an escape rather than fail with UnicodeEncodeError after the work is done.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from indexer.model import ModelUnavailable
    from indexer.store import IndexError_, describe_storage_failure

    from search.searcher import SearchError

    from indexer.tagging import VocabularyError
    from vidx.scenes_cli import run_scenes, run_tags

    handlers = {"index": cmd_index, "search": cmd_search, "status": cmd_status, "config": cmd_config,
                "rebuild-vectors": cmd_rebuild_vectors,
                "scenes": run_scenes, "tags": run_tags}
    if args.command == "moderate":  # cron exit codes (0/1/2) are its own: no shared handler
        from vidx import moderate_cli

        return moderate_cli.run(args)
    try:
        return handlers[args.command](args)
    except (ConfigError, ModelUnavailable, IndexError_, SearchError, VocabularyError, FileNotFoundError) as exc:
        print(f"vidx: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("vidx: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `vidx ... | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        message = describe_storage_failure(exc)
        if message is None:
            raise  # a bug: the traceback is what a report needs
        print(f"vidx: error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
