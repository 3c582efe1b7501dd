"""`zerounlearn receipts ...`: check receipts offline, fetch the public keys, rotate the key.

`receipts verify receipt.json --keys jwks.json` needs no server: exit 0 and "genuine"
for a receipt (or audit checkpoint) signed by a key of the file, unchanged; exit 1 and
the reason otherwise (tampered, unknown key, duplicate object keys, not a receipt).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli.commands import UsageError, _client
from cli.output import emit_json
from client.receipts_verify import (
    CHECKPOINT_TYPE,
    InvalidJson,
    Verdict,
    check_document,
    parse_strict,
)


def _read(path: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _jwks(path: str) -> dict[str, Any]:
    try:
        jwks = parse_strict(_read(path))
    except InvalidJson as exc:
        raise UsageError(f"{path}: {exc}") from None
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise UsageError(f'{path}: not a JWKS (expected {{"keys": [...]}})')
    return jwks


def check(receipt_text: bytes, jwks: dict[str, Any]) -> Verdict:
    """A receipt's or an audit checkpoint's verdict (the file says which it is)."""
    try:
        doc = parse_strict(receipt_text)
    except InvalidJson as exc:
        return Verdict(False, f"refused: {exc}")
    if isinstance(doc, dict) and "checkpoint" in doc:
        return check_document(doc, jwks, "checkpoint", CHECKPOINT_TYPE)
    return check_document(doc, jwks)


def verify(args: argparse.Namespace) -> int:
    verdict = check(_read(args.receipt), _jwks(args.keys))
    if args.json:
        emit_json({"genuine": verdict.genuine, "reason": verdict.reason, "kid": verdict.kid})
    elif verdict.genuine:
        print(f"genuine (signed by key {verdict.kid})")
    else:
        sys.stderr.write(f"NOT genuine: {verdict.reason}\n")
    return 0 if verdict.genuine else 1


def keys(args: argparse.Namespace) -> int:
    with _client(args) as api:
        jwks = api.receipt_keys()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            emit_json(jwks, out)
        print(f"{len(jwks['keys'])} key(s) written to {args.output}")
    else:
        emit_json(jwks)
    return 0


def rotate(args: argparse.Namespace) -> int:
    with _client(args) as api:
        jwk = api.rotate_receipt_key()
    if args.json:
        emit_json(jwk)
    else:
        print(f"new receipts are signed with key {jwk['kid']}; old keys stay in the JWKS")
    return 0


def register(
    top: argparse._SubParsersAction, sub: Callable[..., argparse.ArgumentParser]
) -> None:
    """Add the `receipts` command group (sub: cli.main's helper)."""
    group = top.add_parser("receipts", help="deletion receipts: verify offline, keys")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    verified = sub(actions, "verify", "check a receipt (or audit checkpoint) offline "
                   "against a JWKS file; no server needed", verify)
    verified.add_argument("receipt", help="the receipt JSON file (- = stdin)")
    verified.add_argument("--keys", required=True,
                          help="the JWKS file (GET /v1/receipts/keys, `receipts keys`)")
    fetched = sub(actions, "keys", "fetch the public keys (JWKS; no API key needed)", keys)
    fetched.add_argument("--output", "-o", default=None, help="write them to this file")
    sub(actions, "rotate-key", "sign new receipts with a new key (admin)", rotate)
