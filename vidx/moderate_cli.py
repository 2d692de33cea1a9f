"""``vidx moderate`` (a policy-driven, incremental moderation scan) and ``vidx moderate review``.

Exit status, made for cron: 0 nothing new, 1 new flags, 2 error (bad policy, index
busy or missing, another scan running, ...); 130 when interrupted. Results go to
stdout (``--json`` for machines); logs, warnings and the progress bar to stderr.

Wired into ``vidx.cli`` with ``add_parser(sub)`` in ``build_parser`` and
``handlers["moderate"] = run`` in ``main``.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import logging
import os
import sys
import traceback
from typing import Any

from indexer.pathtext import display_path

EXIT_NOTHING_NEW, EXIT_NEW_FLAGS, EXIT_ERROR = 0, 1, 2
_MAX_LINES = 50  # new flags printed by a scan (all of them go to --json and --report)

_EPILOG = """\
review:
  vidx moderate review                      list open flags (most severe first)
  vidx moderate review --clear 12 15 --note "swimwear, fine"
  vidx moderate review --confirm 13         decisions persist: a reviewed flag is never
                                            raised again for that clip and category
  vidx moderate review --status all --report flags.html

exit status: 0 nothing new, 1 new flags, 2 error, 130 interrupted
cron:        15 3 * * *  vidx moderate --report /srv/reports/moderation-$(date +\\%F).html
"""

_SCAN_ONLY = ("policy", "since", "rescan", "nudenet", "embedding", "batch_clips", "ray_address", "torch_threads")
_REVIEW_ONLY = ("status", "category", "min_score", "limit", "run_id", "confirm", "clear", "reopen", "note",
                "reviewer")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``moderate`` (and its ``review`` form) to the ``vidx`` sub-command parsers."""
    p = subparsers.add_parser(
        "moderate", help="content-moderation scan against a policy (incremental; 'vidx moderate review' "
                         "to review flags)",
        description="Score the index's clips against a moderation policy (new clips only, or all of "
                    "them when the policy changed), record flags, and review them.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="only videos under these files or folders (default: the whole index); "
                        "'review' as the first word reviews flags instead")
    p.add_argument("--db", help="index directory (env VIDX_DB; default: $XDG_DATA_HOME/vidx/index)")
    p.add_argument("--config", help="TOML config file (env VIDX_CONFIG)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr")
    p.add_argument("--report", action="append", default=[], metavar="FILE",
                   help="write the new (scan) or listed (review) flags to FILE: .json, .csv or a "
                        "self-contained .html page with thumbnails (repeatable)")
    p.add_argument("--max-thumbnails", type=int, default=500, dest="max_thumbnails",
                   help="HTML report: decode at most this many thumbnails (default 500)")

    s = p.add_argument_group("scan")
    s.add_argument("--policy", help="policy TOML file (default: the shipped default policy)")
    s.add_argument("--since", help="only videos indexed since DATE[THH:MM] or a span back from now "
                                   "(90m, 36h, 7d)")
    s.add_argument("--rescan", action="store_true",
                   help="score clips in scope again even if scanned under this policy version")
    s.add_argument("--nudenet", action=argparse.BooleanOptionalAction, default=None,
                   help="run the NudeNet frame detector (default: as the policy says; skipped with a "
                        "message when not installed)")
    s.add_argument("--embedding", action=argparse.BooleanOptionalAction, default=True,
                   help="score stored clip embeddings against the policy's prompts (default: yes)")
    s.add_argument("--batch-clips", type=int, dest="batch_clips", help="clips per transaction (default 65536)")
    s.add_argument("--ray-address", dest="ray_address", help="NudeNet: join a Ray cluster ('auto' or host:port)")
    s.add_argument("--torch-threads", type=int, dest="torch_threads", help="threads to embed prompts")
    s.add_argument("--no-progress", action="store_true", dest="no_progress")

    r = p.add_argument_group("review (vidx moderate review ...)")
    r.add_argument("--status", choices=("open", "confirmed", "cleared", "all"),
                   help="list flags with this review status (default open)")
    r.add_argument("--category", help="only this category")
    r.add_argument("--min-score", type=float, dest="min_score", help="only flags scoring at least this")
    r.add_argument("--limit", type=int, help="list at most this many flags")
    r.add_argument("--run", type=int, dest="run_id", help="only flags raised by this scan run")
    r.add_argument("--confirm", type=int, nargs="+", metavar="ID", help="confirm these flags")
    r.add_argument("--clear", type=int, nargs="+", metavar="ID", help="clear these flags (not a violation)")
    r.add_argument("--reopen", type=int, nargs="+", metavar="ID", help="undo a decision")
    r.add_argument("--note", help="reviewer note stored with the decision")
    r.add_argument("--reviewer", help="who decides (default: the login name)")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``vidx moderate`` or ``vidx moderate review``; returns the exit status (0, 1 or 2)."""
    from indexer.config import ConfigError
    from indexer.model import ModelUnavailable
    from indexer.moderation import ModerationError
    from indexer.store import IndexError_, describe_storage_failure

    try:
        review = bool(args.paths) and args.paths[0] == "review"
        _check_options(args, review)
        settings = _settings(args)
        return _review(args, settings) if review else _scan(args, settings)
    except (ModerationError, ConfigError, ModelUnavailable, IndexError_) as exc:
        _error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        raise
    except BrokenPipeError:
        raise
    except Exception as exc:  # cron needs exit 2 for every failure, not a bare traceback's 1
        if getattr(args, "verbose", 0):
            traceback.print_exc()
        _error(describe_storage_failure(exc) or f"{type(exc).__name__}: {exc}")
        return EXIT_ERROR


def _error(message: str) -> None:
    lines = message.strip().splitlines() or ["failed"]
    print(f"vidx: error: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"  {line}", file=sys.stderr)


def _check_options(args: argparse.Namespace, review: bool) -> None:
    from indexer.moderation import ModerationError

    defaults = {"embedding": True}
    given = {k for k in (*_SCAN_ONLY, *_REVIEW_ONLY)
             if getattr(args, k, None) not in (None, False, defaults.get(k, None))}
    if review:
        if len(args.paths) > 1:
            raise ModerationError(f"'vidx moderate review' takes no paths (got {' '.join(args.paths[1:])})")
        wrong = sorted(given & set(_SCAN_ONLY))
        if wrong:
            raise ModerationError(f"--{wrong[0].replace('_', '-')} is an option of the scan, not of "
                                  f"'vidx moderate review'")
        if sum(bool(x) for x in (args.confirm, args.clear, args.reopen)) > 1:
            raise ModerationError("give one decision at a time: --confirm, --clear or --reopen")
    else:
        wrong = sorted(given & set(_REVIEW_ONLY))
        if wrong:
            raise ModerationError(f"--{wrong[0].replace('_', '-')} belongs to 'vidx moderate review'")


def _settings(args: argparse.Namespace):
    from indexer.config import Settings, load_settings

    names = {f.name for f in dataclasses.fields(Settings)}
    cli = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return load_settings(cli, config_path=args.config)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _flag_line(f: dict, prefix: str = "") -> str:
    return (f"{prefix}#{f['flag_id']:<5} {f['status']:<9} {f['severity']:<8} {f['category']:<12} "
            f"{f['score']:.3f}  {display_path(f['path'])}  {f['start']}-{f['end']}  [{f['detector']}, policy "
            f"{f['policy_version']}]" + (f"  note: {f['note']}" if f.get("note") else ""))


# ---------------------------------------------------------------------------- scan


def _scan(args: argparse.Namespace, settings) -> int:
    from indexer.moderation import parse_since, report_format
    from pipelines.moderate import ScanOptions, scan

    for path in args.report:
        report_format(path)  # a bad extension fails before the scan, not after it
    options = ScanOptions(
        policy_path=args.policy, paths=tuple(args.paths), since=parse_since(args.since) if args.since else None,
        rescan=args.rescan, embedding=args.embedding, nudenet=args.nudenet,
        reports=tuple(args.report), max_thumbnails=args.max_thumbnails)
    if args.batch_clips:
        options.batch_clips = max(1, args.batch_clips)
    summary = scan(settings, options, show_progress=not args.no_progress and not args.json)
    if args.json:
        _print_json(summary.as_dict())
        return summary.exit_code
    s = summary
    print(f"moderation scan #{s.run_id} of {s.index_dir}  (policy {s.policy_name} {s.policy_version}, "
          f"{s.scope})")
    parts = []
    if "embedding" in s.detectors:
        rate = f", {s.embedding_clips_per_s:,.0f} clips/s" if s.embedding_scanned else ""
        parts.append(f"embedding {s.embedding_scanned} of {s.clips_in_scope} clips in {s.embedding_s:.2f} s{rate}")
    if "nudenet" in s.detectors:
        parts.append(f"nudenet {s.nudenet_scanned} clips ({s.nudenet_frames} frames) in {s.nudenet_s:.1f} s")
    for det, reason in s.skipped.items():
        parts.append(f"{det} skipped: {reason}")
    print("  " + "; ".join(parts) if parts else "  no detector ran")
    for e in s.errors:
        print(f"  not scanned: {display_path(e['path'])}: {e['reason']} ({e['clips']} clip(s), retried next scan)")
    if not s.clips_in_scope and s.scope != "whole index":
        print(f"  no indexed clip is in scope ({s.scope}); index the files first with 'vidx index'")
    if s.new_flags:
        by_cat = ", ".join(f"{k} {v}" for k, v in sorted(s.new_flags_by_category.items()))
        print(f"  {s.new_flags} new flag(s) ({by_cat}); {s.open_flags} open in total: "
              f"review with 'vidx moderate review'")
        for f in s.flags[:_MAX_LINES]:
            print(_flag_line(f, "  NEW "))
        if len(s.flags) > _MAX_LINES:
            print(f"  ... and {len(s.flags) - _MAX_LINES} more: write them with --report FILE, or list "
                  f"them with 'vidx moderate review --run {s.run_id}'")
    else:
        print(f"  nothing new; {s.open_flags} open flag(s) awaiting review")
    for path in s.reports:
        print(f"  report: {path}")
    return summary.exit_code


# ---------------------------------------------------------------------------- review


def _review(args: argparse.Namespace, settings) -> int:
    from datetime import datetime

    from indexer.moderation import ModerationStore, open_index, write_report

    decision = ("confirm" if args.confirm else "clear" if args.clear else "reopen" if args.reopen else None)
    if args.note and not decision:
        from indexer.moderation import ModerationError

        raise ModerationError("--note goes with a decision (--confirm, --clear or --reopen)")
    for path in args.report:
        from indexer.moderation import report_format

        report_format(path)
    store = open_index(settings.index_dir, write=decision is not None)
    try:
        mstore = ModerationStore(store)
        if not mstore.has_schema():
            if decision:
                from indexer.moderation import ModerationError

                raise ModerationError("no moderation scan has run on this index yet: there is nothing to review")
            flags, counts = [], {"open": 0, "confirmed": 0, "cleared": 0}
        elif decision:
            ids = args.confirm or args.clear or args.reopen
            reviewer = args.reviewer or _login()
            flags = mstore.decide(ids, decision, reviewer, args.note)
            counts = mstore.counts()
        else:
            flags = mstore.flags(status=args.status or "open", category=args.category, run_id=args.run_id,
                                 min_score=args.min_score, limit=args.limit)
            counts = mstore.counts()
    finally:
        store.close()
    meta = {"title": f"vidx moderation review: {len(flags)} flag(s)", "index": settings.index_dir,
            "status": args.status or "open", "generated_at": datetime.now().isoformat(timespec="seconds")}
    for path in args.report:
        write_report(path, flags, meta, args.max_thumbnails)
    if args.json:
        _print_json({"decision": decision, "counts": counts, "flags": flags,
                     "reports": [os.path.abspath(p) for p in args.report]})
        return EXIT_NOTHING_NEW
    if decision:
        verb = {"confirm": "confirmed", "clear": "cleared", "reopen": "reopened"}[decision]
        for f in flags:
            print(_flag_line(f, f"{verb} "))
    else:
        for f in flags:
            print(_flag_line(f))
        print(f"{len(flags)} listed; {counts['open']} open, {counts['confirmed']} confirmed, "
              f"{counts['cleared']} cleared")
    for path in args.report:
        print(f"report: {os.path.abspath(path)}")
    return EXIT_NOTHING_NEW


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return os.environ.get("USER", "unknown")


logging.getLogger(__name__).addHandler(logging.NullHandler())
