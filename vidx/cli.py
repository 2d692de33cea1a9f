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

from indexer.config import DEFAULTS, ConfigError, Settings, load_settings

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidx", description="Batch video indexing and search.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index video files and folders (incremental, resumable)")
    p.add_argument("paths", nargs="+", help="files and folders to index (recursive)")
    _add_common(p)
    _add_model(p)
    p.add_argument("--clip-s", type=float, dest="clip_s", help=f"clip length in seconds (default {DEFAULTS.clip_s})")
    p.add_argument("--snippets", type=int, help=f"TSN snippets per clip (default {DEFAULTS.snippets})")
    p.add_argument("--sampling", choices=("exact", "keyframe"), help="snippet frames: exact centre or nearest keyframe")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--embed-workers", type=int, dest="embed_workers")
    p.add_argument("--decode-workers", type=int, dest="decode_workers")
    p.add_argument("--torch-threads", type=int, dest="torch_threads")
    p.add_argument("--decode-timeout-s", type=float, dest="decode_timeout_s")
    p.add_argument("--ray-address", dest="ray_address", help="join a Ray cluster ('auto' or host:port)")
    p.add_argument("--include-hidden", action="store_const", const=True, dest="include_hidden")
    p.add_argument("--retry-failed", action="store_true", help="try files that failed before again")
    p.add_argument("--reset", action="store_true", help="empty the index first (e.g. to change model)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("status", help="what the index holds, and the files that failed")
    _add_common(p)

    p = sub.add_parser("config", help="show the effective settings and where defaults come from")
    _add_common(p)
    return parser


_SETTING_NAMES = {f.name for f in dataclasses.fields(Settings)}


def _settings_from(args: argparse.Namespace) -> Settings:
    cli = {k: v for k, v in vars(args).items() if k in _SETTING_NAMES and v is not None}
    return load_settings(cli, config_path=args.config)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _fmt_duration(seconds: float) -> str:
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


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
        for f in s.failures:
            print(f"  {f['status']}: {f['path']}: {f['reason']}")
        if s.status == "interrupted":
            print("  interrupted: finished videos are saved; run the same command again to continue")
    return EXIT_INTERRUPTED if summary.status == "interrupted" else EXIT_OK


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
    print(f"  size       {status['index_bytes'] / 1e6:.1f} MB; FAISS {status['faiss']['type']} "
          f"{'in sync' if status['faiss']['in_sync'] else 'OUT OF SYNC (rebuilt on next use)'}")
    if status["last_run"]:
        r = status["last_run"]
        print(f"  last run   #{r['run_id']} {r['kind']} {r['status']} at {r['started_at']}")
    for f in status["failures"]:
        print(f"  {f['status']}: {f['path']}: {f['reason']}")
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
    logging.basicConfig(level=level, stream=sys.stderr, format="vidx: %(levelname)s: %(message)s")
    for noisy in ("ray", "filelock", "urllib3", "huggingface_hub", "root"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from indexer.model import ModelUnavailable
    from indexer.store import IndexError_

    handlers = {"index": cmd_index, "status": cmd_status, "config": cmd_config}
    try:
        return handlers[args.command](args)
    except (ConfigError, ModelUnavailable, IndexError_, FileNotFoundError) as exc:
        print(f"vidx: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("vidx: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `vidx ... | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
