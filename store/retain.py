"""Retain banks: per model, the facts it must keep (retain/{model_id}.json).

Bank text is kept like request text: under a private prefix (locally 0700/0600), never
in logs, job documents, manifests or the audit trail, which name a fact by its salted
hash only. A fact's `sha256` is HMAC-SHA256 (the installation's record salt) of its
prompt and answer, so one fact is stored once; its id is "f-" + 16 hex digits of it.

A fact's `status`: "pending" (not measured yet), "known" (the model reproduces it, so
forget edits protect it), "unknown" (it does not: nothing to protect) or "invalid" (it
does not fit the model: too long, or no token). `measured_on` names the version.
Every change is one atomic read-modify-write of the model's bank document.

At rest the facts are sealed (store.datakeys) under a data key of the bank's own, and
every write seals them under a NEW key and then destroys the one it replaced: a fact
removed from the bank (by an operator, or forgotten by a forget request) is shredded
with that key, in every older copy of the document (backups, S3 object versions,
file-system journals). The document names its key ("key"); its facts are "facts".
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from typing import Any

from store.backends.base import ObjectBackend
from store.datakeys import DataKeys, is_sealed, seal
from store.documents import MODEL_ID_RE, utc_now
from store.enums import FACT_STATUSES, FactStatus
from store.errors import InvalidDocument, NotFound
from store.hashing import salted_hash
from store.objects import dump, load

MAX_BANK_FACTS = 10_000
"""Most facts one model's bank holds (the document is read by every forget job)."""
FACT_ID_RE = re.compile(r"^f-[0-9a-f]{16}$")
TEXT_FIELDS = ("prompt", "answer", "subject", "relation")
"""The fields of a fact that hold text (shown to admins only, on request)."""


class BankFull(InvalidDocument):
    """Adding the facts would take the bank past MAX_BANK_FACTS."""


def public(fact: dict[str, Any]) -> dict[str, Any]:
    """A fact without its text: what listings show."""
    return {k: v for k, v in fact.items() if k not in TEXT_FIELDS}


class RetainStore:
    """The banks of every model: {"model_id", "seeded", "facts": [...], "updated_at"}."""

    def __init__(
        self, backend: ObjectBackend, salt: Callable[[], bytes], data_keys: DataKeys
    ) -> None:
        self.backend = backend
        self._salt = salt
        self.data_keys = data_keys

    @staticmethod
    def _key(model_id: str) -> str:
        if not isinstance(model_id, str) or not MODEL_ID_RE.match(model_id):
            raise NotFound(f"model {model_id!r} not found", kind="model")
        return f"retain/{model_id}.json"

    def fact_hash(self, fact: dict[str, Any]) -> str:
        """The salted hash that names a fact (its prompt and answer)."""
        return salted_hash(self._salt(), {"retain": [fact["prompt"], fact["answer"]]})

    def read(self, model_id: str) -> dict[str, Any]:
        """The bank document (an empty one when the model has none yet)."""
        key = self._key(model_id)
        blob = self.backend.read(key)
        return self._open(model_id, blob.data if blob is not None else None)

    def _open(self, model_id: str, data: bytes | None) -> dict[str, Any]:
        """A stored bank with its facts opened (an older, unsealed one as it is)."""
        if data is None:
            return _empty(model_id)
        bank = load(data, self._key(model_id))
        if is_sealed(bank.get("facts")):
            facts = self.data_keys.unseal(bank["key"], _context(model_id), bank["facts"])
            bank = {**bank, "facts": facts}
        return bank

    def facts(self, model_id: str) -> list[dict[str, Any]]:
        """Every fact of the bank, text included, in the order they were added."""
        return list(self.read(model_id)["facts"])

    def get(self, model_id: str, fact_id: str) -> dict[str, Any]:
        for fact in self.facts(model_id):
            if fact["id"] == fact_id:
                return fact
        raise NotFound(f"fact {fact_id!r} is not in the bank of model {model_id}",
                       kind="retain_fact")

    def _change(
        self, model_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Atomic read-modify-write of a bank; change returns the new bank or None.
        The new bank is sealed under a new data key; the replaced key is destroyed."""
        key = self._key(model_id)
        name = f"retain-{model_id}-{secrets.token_hex(8)}"
        written: list[dict[str, Any]] = []
        replaced: list[Any] = [None]
        data_key: list[bytes] = []

        def on_bytes(data: bytes | None) -> bytes | None:  # may run again: no side effect
            bank = self._open(model_id, data)  # but making the one new key (idempotent)
            new = change({**bank, "facts": list(bank["facts"])})
            written[:] = [new] if new is not None else []
            if new is None:
                return None
            replaced[0] = bank.get("key")
            if not data_key:
                data_key.append(self.data_keys.create(name))
            facts = seal(data_key[0], name, _context(model_id), new["facts"])
            return dump({**new, "key": name, "facts": facts, "updated_at": utc_now()})

        # on an error nothing is destroyed: the write may have landed (an orphan key
        # then names nothing, or the bank's current one)
        self.backend.update(key, on_bytes)
        if written and isinstance(replaced[0], str) and replaced[0] != name:
            self.data_keys.destroy(replaced[0])
        elif not written and data_key:
            self.data_keys.destroy(name)
        return written[0] if written else None

    def add(
        self,
        model_id: str,
        facts: Iterable[dict[str, Any]],
        *,
        origin: str,
        actor: str | None,
        seed: bool = False,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Add facts ({"prompt", "answer", "subject"?, "relation"?}); one already in the
        bank is left as it is. Returns (added, already there), in the given order.
        seed: mark the bank seeded (a built-in bank is seeded once, never again)."""
        now = utc_now()
        given = []
        for fact in facts:
            sha = self.fact_hash(fact)
            given.append({
                "id": f"f-{sha[:16]}", "sha256": sha, "prompt": fact["prompt"],
                "answer": fact["answer"], "subject": fact.get("subject"),
                "relation": fact.get("relation"), "status": FactStatus.PENDING, "measured_on": None,
                "measured_at": None, "origin": origin, "added_by": actor, "added_at": now,
            })
        added: list[dict[str, Any]] = []
        existing: list[dict[str, Any]] = []

        def change(bank: dict[str, Any]) -> dict[str, Any] | None:
            by_id = {f["id"]: f for f in bank["facts"]}
            added.clear()
            existing.clear()
            for fact in given:
                if fact["id"] in by_id:
                    existing.append(by_id[fact["id"]])
                else:
                    by_id[fact["id"]] = fact
                    added.append(fact)
            if len(bank["facts"]) + len(added) > MAX_BANK_FACTS:
                raise BankFull(f"the bank of model {model_id} would hold "
                               f"{len(bank['facts']) + len(added)} facts; at most "
                               f"{MAX_BANK_FACTS}")
            if not added and (not seed or bank.get("seeded")):
                return None
            return {**bank, "model_id": model_id, "facts": bank["facts"] + added,
                    "seeded": bool(bank.get("seeded") or seed)}

        self._change(model_id, change)
        return added, existing

    def remove(self, model_id: str, fact_ids: Iterable[str]) -> list[dict[str, Any]]:
        """Take facts out of the bank; returns those that were there."""
        wanted = set(fact_ids)
        removed: list[dict[str, Any]] = []

        def change(bank: dict[str, Any]) -> dict[str, Any] | None:
            removed[:] = [f for f in bank["facts"] if f["id"] in wanted]
            if not removed:
                return None
            return {**bank, "facts": [f for f in bank["facts"] if f["id"] not in wanted]}

        self._change(model_id, change)
        return removed

    def set_status(self, model_id: str, statuses: dict[str, str], version: str) -> int:
        """Record measurements {fact id: status} made on `version`; facts removed
        meanwhile are skipped. Returns how many facts were updated."""
        for status in statuses.values():
            if status not in FACT_STATUSES:
                raise InvalidDocument(f"fact status must be one of {', '.join(FACT_STATUSES)}")
        now = utc_now()
        count = [0]

        def change(bank: dict[str, Any]) -> dict[str, Any] | None:
            facts = []
            count[0] = 0
            for fact in bank["facts"]:
                if fact["id"] in statuses:
                    fact = {**fact, "status": statuses[fact["id"]], "measured_on": version,
                            "measured_at": now}
                    count[0] += 1
                facts.append(fact)
            return {**bank, "facts": facts} if count[0] else None

        self._change(model_id, change)
        return count[0]


def _context(model_id: str) -> str:
    """Where sealed facts belong (part of their associated data)."""
    return f"retain/{model_id}"


def _empty(model_id: str) -> dict[str, Any]:
    return {"model_id": model_id, "seeded": False, "facts": [], "updated_at": None}


def counts(facts: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many facts per status, and in all."""
    out: dict[str, int] = dict.fromkeys(FACT_STATUSES, 0)
    total = 0
    for fact in facts:
        status = fact.get("status", FactStatus.PENDING)
        out[status] = out.get(status, 0) + 1
        total += 1
    return {**out, "total": total}
