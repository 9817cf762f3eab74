"""Kafka SASL and TLS settings: what reaches faust, bad combinations refused, no leaks.

The embedded Tansu 0.6.0 has ``--cert`` and ``--authentication`` flags, but with a
certificate it closed every TLS handshake here (with a ``tcp://`` or ``tls://``
listener), so no broker test runs over TLS or SASL: these tests check the credentials
object `stream.app.kafka_credentials` builds from the settings, how faust turns it into
aiokafka's options, the TLS context loading a test CA made with ``openssl``, and that the
SASL password appears in no repr, log record or metric.
"""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from stream.app import create_app, kafka_credentials, kafka_ssl_context
from stream.settings import StreamSettings

SECRET = "k4fka-Pw-77q"


def settings(**values: Any) -> StreamSettings:
    return StreamSettings(metrics_port=0, web_port=0, **values)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a client certificate signed by it, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=segstream test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
        "-subj", "/CN=segstream-worker")  # fmt: skip
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "client.pem", "-days", "2")  # fmt: skip
    return {name: d / f"{name}" for name in ("ca.pem", "client.pem", "client.key")}


def test_plaintext_by_default() -> None:
    assert kafka_credentials(settings()) is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext(mechanism: str) -> None:
    creds = kafka_credentials(
        settings(
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism=mechanism,
            kafka_sasl_username="app",
            kafka_sasl_password=SECRET,
        )
    )
    assert isinstance(creds, faust.SASLCredentials)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_PLAINTEXT"
    assert auth["sasl_mechanism"] == mechanism
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("app", SECRET)
    assert auth["ssl_context"] is None
    assert SECRET not in repr(creds)


def test_sasl_ssl_verifies_the_broker_with_the_ca(pki: dict[str, Path]) -> None:
    creds = kafka_credentials(
        settings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="app",
            kafka_sasl_password=SECRET,
            kafka_ssl_cafile=pki["ca.pem"],
        )
    )
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_SSL"
    context: ssl.SSLContext = auth["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    subjects = [c["subject"] for c in context.get_ca_certs()]
    assert ((("commonName", "segstream test CA"),),) in subjects


def test_ssl_with_a_client_certificate(pki: dict[str, Path]) -> None:
    s = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=pki["ca.pem"],
        kafka_ssl_certfile=pki["client.pem"],
        kafka_ssl_keyfile=pki["client.key"],
    )
    creds = kafka_credentials(s)
    assert isinstance(creds, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(creds)["security_protocol"] == "SSL"
    app = create_app(s, registry=CollectorRegistry())
    assert app.conf.broker_credentials is creds or isinstance(
        app.conf.broker_credentials, faust.SSLCredentials
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs SEGSTREAM_KAFKA_SASL_USERNAME"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "app"},
            "SEGSTREAM_KAFKA_SASL_PASSWORD",
        ),
        ({"kafka_sasl_username": "app", "kafka_sasl_password": SECRET}, "does not use them"),
        ({"kafka_security_protocol": "SSL", "kafka_sasl_password": SECRET}, "does not use them"),
        ({"kafka_ssl_cafile": "/ca.pem"}, "does not use TLS"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "/k.pem"},
            "needs SEGSTREAM_KAFKA_SSL_CERTFILE",
        ),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI"},
            "kafka_sasl_mechanism",
        ),
    ],
)
def test_bad_combinations_are_refused_at_startup(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(**values)
    assert message in str(caught.value)
    assert SECRET not in str(caught.value)


def test_unreadable_tls_files_name_the_setting(tmp_path: Path, pki: dict[str, Path]) -> None:
    missing = settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "nope.pem")
    with pytest.raises(ValueError, match=r"SEGSTREAM_KAFKA_SSL_CAFILE=.*nope\.pem"):
        kafka_ssl_context(missing)
    bad_key = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=pki["ca.pem"],
        kafka_ssl_certfile=pki["client.pem"],
        kafka_ssl_keyfile=pki["ca.pem"],  # not a key
    )
    with pytest.raises(ValueError, match="SEGSTREAM_KAFKA_SSL_CERTFILE"):
        create_app(bad_key, registry=CollectorRegistry())


def test_the_sasl_password_never_shows(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Read from the environment as the worker does; then look everywhere it could leak."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SEGSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("SEGSTREAM_KAFKA_SASL_USERNAME", "app")
    monkeypatch.setenv("SEGSTREAM_KAFKA_SASL_PASSWORD", SECRET)
    s = settings()
    assert s.kafka_sasl_password is not None
    assert s.kafka_sasl_password.get_secret_value() == SECRET
    registry = CollectorRegistry()
    app = create_app(s, registry=registry)
    for text, where in (
        (repr(s), "repr(settings)"),
        (str(s.model_dump()), "the settings dump"),
        (repr(app.conf.broker_credentials), "repr(credentials)"),
        (generate_latest(registry).decode(), "/metrics"),
        (caplog.text, "the log"),
    ):
        assert SECRET not in text, where
