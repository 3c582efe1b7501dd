"""HTTPS callbacks against a real TLS receiver on 127.0.0.1 (tests/support/tls.py: a
private CA and a server certificate made here): delivered when the service trusts the CA
(ZEROUNLEARN_CALLBACK_CA_FILE); refused, recorded and retried when it does not; and the
certificate is checked against the URL's host even though the connection goes to the
checked address.

Real store, real sockets, the reconciler's own threads on a real Redis (the module's
own database).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis

from app.callback_delivery import CallbackDispatcher
from app.queue import JobQueue
from app.reconciler import Reconciler
from app.settings import Settings
from store import ArtifactStore
from tests.api.test_callback_delivery import attempts, ended_job_with_callback
from tests.support import processes
from tests.support.redis_dbs import NEVER_CONTACTED
from tests.support.tls import TlsReceiver, make_certificate

pytestmark = pytest.mark.timeout(120)
HOST = "hooks.example.test"


def pinned(host: str, port: int) -> str:
    """What DNS would answer for HOST in production (a checked public address); here
    the receiver's loopback address."""
    return "127.0.0.1"


def make_settings(
    tmp_path: Path, redis_url: str = NEVER_CONTACTED, **overrides: object
) -> Settings:
    values: dict = {"redis_url": redis_url, "data_dir": tmp_path / "data",
                    "callback_allowed_hosts": f"127.0.0.1,{HOST}", "callback_timeout_s": 5.0,
                    "callback_backoff_s": 0.5, "request_retention_s": 0,
                    "reconcile_interval_s": 0.2, "reconcile_grace_s": 0}
    values.update(overrides)
    return Settings(**values)


def test_delivered_when_the_service_trusts_the_ca_file(tmp_path: Path) -> None:
    cert = make_certificate(tmp_path / "tls", [], ["127.0.0.1"])
    settings = make_settings(tmp_path, callback_ca_file=cert.ca_file)
    assert settings.callback_ca_file == cert.ca_file
    store = ArtifactStore(settings.data_dir)
    receiver = TlsReceiver(cert)
    try:
        job_id = ended_job_with_callback(store, receiver.url)
        assert CallbackDispatcher(store, settings).attempt(job_id) == "delivered"
    finally:
        receiver.close()
    assert len(receiver.calls) == 1 and receiver.failures == []
    assert receiver.calls[0]["headers"]["webhook-id"] == f"msg_{job_id}"
    assert [a["outcome"] for a in attempts(store, job_id)] == ["delivered"]
    assert store.requests.get(job_id)["callback"]["state"] == "delivered"


def test_untrusted_certificate_is_a_failed_attempt_that_is_retried(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    cert = make_certificate(tmp_path / "tls", [], ["127.0.0.1"])
    settings = make_settings(tmp_path, redis_url)  # no ZEROUNLEARN_CALLBACK_CA_FILE
    store = ArtifactStore(settings.data_dir)
    reconciler = Reconciler(store, JobQueue(redis, settings), settings)
    receiver = TlsReceiver(cert)
    try:
        job_id = ended_job_with_callback(store, receiver.url)
        reconciler.start()
        processes.wait_until(lambda: len(attempts(store, job_id)) >= 2, 15, 0.05,
                             "two recorded attempts")
        # the pass goes on around the failures: the request text was purged meanwhile
        assert store.requests.get(job_id)["task_args"] is None
    finally:
        reconciler.stop()
        receiver.close()
    outcomes = attempts(store, job_id)
    assert all(a["outcome"] == "SSLCertVerificationError" for a in outcomes), outcomes
    assert all(a["state"] == "pending" for a in outcomes), outcomes
    assert receiver.calls == [] and len(receiver.failures) >= 2
    callback = store.requests.get(job_id)["callback"]
    assert callback["state"] == "pending" and callback["attempts"] >= 2
    assert callback["last_error"] == "SSLCertVerificationError"


def test_the_certificate_must_name_the_urls_host(tmp_path: Path) -> None:
    """The connection goes to the pinned address, the TLS server name and the check are
    the URL's host: a certificate for HOST is accepted; one for 127.0.0.1 (the address
    connected to) and another name is not."""
    good = make_certificate(tmp_path / "good", [HOST], [])
    wrong = make_certificate(tmp_path / "wrong", ["other.example.test"], ["127.0.0.1"])
    outcomes, receivers = [], []
    for cert in (good, wrong):
        settings = make_settings(tmp_path / cert.ca_file.parent.name,
                                 callback_ca_file=cert.ca_file)
        store = ArtifactStore(settings.data_dir)
        receiver = TlsReceiver(cert)
        receivers.append(receiver)
        try:
            job_id = ended_job_with_callback(store, f"https://{HOST}:{receiver.port}/hook")
            dispatcher = CallbackDispatcher(store, settings, resolver=pinned)
            outcomes.append(dispatcher.attempt(job_id))
        finally:
            receiver.close()
    assert outcomes == ["delivered", "SSLCertVerificationError"]
    delivered, refused = receivers
    assert delivered.server_names == [HOST] and refused.server_names == [HOST]
    assert delivered.calls[0]["headers"]["Host"] == f"{HOST}:{delivered.port}"
    assert refused.calls == []


def test_a_ca_file_that_does_not_exist_is_refused_at_start(tmp_path: Path) -> None:
    from app.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="ZEROUNLEARN_CALLBACK_CA_FILE"):
        load_settings(data_dir=tmp_path, callback_ca_file=tmp_path / "missing.pem")
