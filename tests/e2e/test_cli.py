"""The `zerounlearn` command run as a real subprocess against a real API + worker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.live import LiveService, records
from tests.support.processes import REPO, TEST_ADMIN_TOKEN, free_port
from tests.support.tiny_model import TINY_REQUEST_HPARAMS

pytestmark = pytest.mark.timeout(600)


def _command() -> list[str]:
    """The installed console script; `python -m cli.main` where it is not installed."""
    script = Path(sys.executable).parent / "zerounlearn"
    if script.exists():
        return [str(script)]
    found = shutil.which("zerounlearn")
    return [found] if found else [sys.executable, "-m", "cli.main"]


def run(live: LiveService | None, *args: str, token: str | None = TEST_ADMIN_TOKEN,
        url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROUNLEARN_")}
    env["ZEROUNLEARN_URL"] = url or (live.url if live else "http://127.0.0.1:9")
    if token:
        env["ZEROUNLEARN_TOKEN"] = token
    return subprocess.run([*_command(), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=400)


def test_models_tables_and_json(live: LiveService) -> None:
    mid = live.model["id"]
    listed = run(live, "models", "list")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()[:2]
    assert header.split()[:3] == ["ID", "NAME", "STATUS"] and row.split()[:3] == [mid, "tiny",
                                                                                   "ready"]
    shown = run(live, "models", "show", mid, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["architecture"] == "gpt2"
    missing = run(live, "models", "show", "m-000000000000", "--json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["error"]["code"] == "model_not_found"
    assert "404 model_not_found" in missing.stderr


def test_forget_wait_versions_rollback_generate(live: LiveService, tmp_path: Path) -> None:
    mid = live.model["id"]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records(30, 2)))
    forget = run(live, "forget", "--model", mid, "--file", str(path), "--wait", "--json",
                 "--hparams", json.dumps(TINY_REQUEST_HPARAMS))
    assert forget.returncode == 0, forget.stderr
    job = json.loads(forget.stdout)
    assert job["status"] == "succeeded" and job["kind"] == "forget"
    assert "%" in forget.stderr and "forget succeeded: done" in forget.stderr  # the bar
    version = job["result"]["version"]

    shown = run(live, "jobs", "show", job["id"])
    assert shown.returncode == 0 and "succeeded" in shown.stdout and version in shown.stdout
    watched = run(live, "jobs", "watch", job["id"], "--json")
    assert watched.returncode == 0 and json.loads(watched.stdout)["id"] == job["id"]
    listed = run(live, "versions", "list", mid)
    assert listed.returncode == 0
    line = next(x for x in listed.stdout.splitlines() if x.startswith(version + " "))
    assert " yes " in line and " 2 " in line  # active, two records

    verify = run(live, "verify", "--model", mid, "--version", version, "--file", str(path),
                 "--wait")
    assert "2/2 forgotten" in verify.stdout, verify.stdout + verify.stderr
    assert "probes    context " in verify.stdout and "chat -," in verify.stdout  # no template
    passed = "passed    True" in verify.stdout
    assert verify.returncode == (0 if passed else 1)  # a report that fails its checks: 1

    # the parent is sealed by the forget: a rollback is an admin's override, with a reason
    parent = job["result"]["parent"]
    refused = run(live, "versions", "activate", mid, parent)
    assert refused.returncode == 1 and "version_sealed" in refused.stderr
    reason = ["--override-seal-reason", "cli test: rollback"]
    back = run(live, "versions", "activate", mid, parent, *reason)
    assert back.returncode == 0 and f"{parent} is active" in back.stdout
    said = run(live, "generate", "--model", mid, "--prompt", records(30)[0]["prompt"],
               "--max-new-tokens", "2", "--json", *reason)
    assert said.returncode == 0, said.stderr
    assert json.loads(said.stdout)["version"] == parent
    assert run(live, "versions", "activate", mid, version).returncode == 0  # the head again
    # the forgotten text never appears in what the command printed about the job
    assert records(30)[0]["prompt"] not in forget.stdout + forget.stderr + shown.stdout


def test_keys_and_exit_codes(live: LiveService, tmp_path: Path) -> None:
    created = run(live, "keys", "create", "--role", "viewer", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    listed = run(live, "keys", "list")
    assert key["id"] in listed.stdout and "viewer" in listed.stdout
    as_viewer = run(live, "versions", "activate", live.model["id"], "v0", token=key["key"])
    assert as_viewer.returncode == 1 and "403" in as_viewer.stderr
    revoked = run(live, "keys", "revoke", key["id"])
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    after = run(live, "models", "list", token=key["key"])
    assert after.returncode == 1 and "401" in after.stderr

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "answer": " x"}\nnot json at all\n')
    usage = run(live, "forget", "--model", live.model["id"], "--file", str(bad))
    assert usage.returncode == 2 and "line 2" in usage.stderr and "not json" not in usage.stderr
    down = run(None, "models", "list", url=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 3 and "cannot reach" in down.stderr
    nothing = run(live, "nonsense")
    assert nothing.returncode == 2
