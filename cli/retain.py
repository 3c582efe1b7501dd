"""`zerounlearn retain ...`: a model's retain bank (the facts forget edits must keep)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from cli.commands import UsageError, _accepted, _client, _follow
from cli.output import emit_json, table

FACT_COLUMNS = [("id", "id"), ("status", "status"), ("measured on", "measured_on"),
                ("origin", "origin"), ("added", "added_at")]
TEXT_COLUMNS = [("prompt", "prompt"), ("answer", "answer"), ("subject", "subject")]


def _read(path: str) -> bytes:
    """The file as it is: the API parses it and names a bad line (never its text)."""
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def add(args: argparse.Namespace) -> int:
    data = _read(args.file)
    if not data.strip():
        raise UsageError(f"{args.file}: no facts (one JSON object per line)")
    with _client(args) as api:
        added = api.add_retain_jsonl(args.model, data)
        if args.wait and added.get("job_id"):
            return _follow(api, args, added["job_id"])
    if args.json:
        emit_json(added)
        return 0
    print(f"{added['added']} fact(s) added, {added['existing']} already in the bank "
          f"({added['counts']['total']} in all)")
    if added.get("job_id"):
        print(f"measuring: job {added['job_id']}; follow it with "
              f"`zerounlearn jobs watch {added['job_id']}`")
    else:
        print("the model's prepare job will measure them")
    return 0


def list_(args: argparse.Namespace) -> int:
    with _client(args) as api:
        bank = api.list_retain(args.model, include_text=args.text)
    if args.json:
        emit_json(bank)
        return 0
    table(bank["facts"], FACT_COLUMNS + (TEXT_COLUMNS if args.text else []))
    counts = bank["counts"]
    print(f"{counts['total']} fact(s): {counts['known']} known, {counts['unknown']} unknown, "
          f"{counts['pending']} pending, {counts['invalid']} invalid")
    return 0


def remove(args: argparse.Namespace) -> int:
    removed = []
    with _client(args) as api:
        for fact_id in args.ids:
            removed.append(api.remove_retain(args.model, fact_id))
            if not args.json:
                print(f"removed {fact_id}")
    if args.json:
        emit_json(removed)
    return 0


def measure(args: argparse.Namespace) -> int:
    with _client(args) as api:
        return _accepted(api, args, api.measure_retain(args.model))


def register(
    top: argparse._SubParsersAction,
    sub: Callable[..., argparse.ArgumentParser],
    wait_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add the `retain` command group (sub and wait_flags: cli.main's helpers)."""
    retain = top.add_parser("retain", help="a model's retain bank: facts it must keep")
    actions = retain.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_ = sub(actions, "add", "add facts from JSON lines (operator)", add)
    add_.add_argument("--model", required=True)
    add_.add_argument("--file", required=True,
                      help='{"prompt", "answer", "subject"?} per line, or a JSON array; - = stdin')
    wait_flags(add_)
    listed = sub(actions, "list", "ids, hashes and statuses of the bank", list_)
    listed.add_argument("--model", required=True)
    listed.add_argument("--text", action="store_true", help="also the text (admin; audited)")
    removed = sub(actions, "remove", "remove facts by id (operator)", remove)
    removed.add_argument("--model", required=True)
    removed.add_argument("ids", nargs="+", metavar="ID")
    measured = sub(actions, "measure", "measure every fact again on the active version "
                   "(operator)", measure)
    measured.add_argument("--model", required=True)
    wait_flags(measured)
