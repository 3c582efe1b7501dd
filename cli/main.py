"""`zerounlearn`: argument parsing and exit codes; the commands are in cli.commands.

Exit codes: 0 success; 1 the API refused or a job failed; 2 bad usage or input file;
3 the API could not be reached.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cli import commands, receipts, retain
from client import ApiError, ConnectionFailed

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("ZEROUNLEARN_URL",
                                                        "http://127.0.0.1:8000"),
                        help="API base URL (env ZEROUNLEARN_URL)")
    parser.add_argument("--token", default=os.environ.get("ZEROUNLEARN_TOKEN"),
                        help="API key (env ZEROUNLEARN_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _sub(parent: argparse._SubParsersAction, name: str, help_: str,
         func: commands.Command) -> argparse.ArgumentParser:
    parser = parent.add_parser(name, help=help_, description=help_)
    _common(parser)
    parser.set_defaults(func=func)
    return parser


def _wait_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true",
                        help="wait for the job with a live progress bar")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait")


def _override_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--override-seal-reason", default=None, metavar="REASON",
                        help="admin: use a sealed version anyway, for this call (audited)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zerounlearn", description=__doc__.splitlines()[0])
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = top.add_parser("serve", help="run API + worker (+ embedded Redis) locally")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-only", action="store_true", help="only the API (python -m app)")
    serve.set_defaults(func=commands.serve)
    worker = top.add_parser("worker", help="run one worker (python -m worker)")
    worker.add_argument("--burst", action="store_true")
    worker.add_argument("--name", default=None)
    worker.set_defaults(func=commands.worker)

    models = top.add_parser("models", help="register and inspect models").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    add = _sub(models, "add", "register a model (admin)", commands.models_add)
    add.add_argument("name")
    add.add_argument("source", help="local HF dir, .gguf file or builtin:smollm2-135m-instruct")
    add.add_argument("--edit-layers", type=int, nargs="+", default=None)
    add.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    _wait_flags(add)
    _limit_flag(_sub(models, "list", "list models", commands.models_list))
    _sub(models, "show", "one model", commands.models_show).add_argument("model")

    forget = _sub(top, "forget", "submit a forget request (operator)", commands.forget)
    forget.add_argument("--model", required=True)
    forget.add_argument("--file", required=True, help="records: JSON lines (or a JSON array)")
    forget.add_argument("--method", default=None)
    forget.add_argument("--base-version", default=None)
    forget.add_argument("--hparams", default=None, help="JSON object of hyper-parameters")
    forget.add_argument("--quality-gate", default=None,
                        help='JSON object of gate limits, e.g. \'{"max_guard_drop": 10}\'')
    forget.add_argument("--idempotency-key", default=None)
    _override_flag(forget)
    _wait_flags(forget)

    jobs = top.add_parser("jobs", help="follow and cancel jobs").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    jlist = _sub(jobs, "list", "list jobs", commands.jobs_list)
    jlist.add_argument("--model", default=None)
    jlist.add_argument("--status", default=None,
                       choices=["queued", "running", "succeeded", "failed", "cancelled"])
    jlist.add_argument("--kind", default=None,
                       choices=["prepare", "forget", "verify", "export", "retain", "compact"])
    _limit_flag(jlist)
    _sub(jobs, "show", "one job", commands.jobs_show).add_argument("job")
    watch = _sub(jobs, "watch", "follow a job until it ends", commands.jobs_watch)
    watch.add_argument("job")
    watch.add_argument("--timeout", type=float, default=3600.0)
    _sub(jobs, "cancel", "cancel a queued job (operator)", commands.jobs_cancel).add_argument(
        "job")

    versions = top.add_parser("versions", help="versions of a model").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    vlist = _sub(versions, "list", "a model's versions", commands.versions_list)
    vlist.add_argument("model")
    _limit_flag(vlist)
    activate = _sub(versions, "activate", "activate a version: rollback (admin)",
                    commands.versions_activate)
    activate.add_argument("model")
    activate.add_argument("version")
    _override_flag(activate)
    export = _sub(versions, "export", "export a version as a HF checkpoint (operator)",
                  commands.versions_export)
    export.add_argument("model")
    export.add_argument("version")
    _override_flag(export)
    _wait_flags(export)
    delete = _sub(versions, "delete", "delete a version's patch and exports (admin)",
                  commands.versions_delete)
    delete.add_argument("model")
    delete.add_argument("version")
    compact = _sub(versions, "compact", "rewrite a version as one patch from v0 (admin)",
                   commands.versions_compact)
    compact.add_argument("model")
    compact.add_argument("version")
    _override_flag(compact)
    _wait_flags(compact)

    verify = _sub(top, "verify", "verify a version against its parent (operator)",
                  commands.verify)
    verify.add_argument("--model", required=True)
    verify.add_argument("--version", required=True)
    verify.add_argument("--file", required=True, help="records: JSON lines (or a JSON array)")
    verify.add_argument("--reference-file", default=None, help="reference texts, one a line")
    _override_flag(verify)
    _wait_flags(verify)

    generate = _sub(top, "generate", "generate with a version (operator)", commands.generate)
    generate.add_argument("--model", required=True)
    generate.add_argument("--version", default=None, help="default: the active version")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--max-new-tokens", type=int, default=None)
    _override_flag(generate)

    retain.register(top, _sub, _wait_flags)
    receipts.register(top, _sub)

    keys = top.add_parser("keys", help="API keys (admin)").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    create = _sub(keys, "create", "create a key (printed once)", commands.keys_create)
    create.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    create.add_argument("--models", nargs="+", default=None, help="model scope")
    _limit_flag(_sub(keys, "list", "list keys", commands.keys_list))
    _sub(keys, "revoke", "revoke a key", commands.keys_revoke).add_argument("key")
    return parser


def _limit_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=_positive, default=None,
                        help="show at most this many (default: all, page after page)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or EXIT_OK)
    except ConnectionFailed as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return EXIT_UNREACHABLE
    except ApiError as exc:
        if getattr(args, "json", False):
            commands.emit_error(exc)
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_FAILED
    except commands.UsageError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
