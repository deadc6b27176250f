"""shared/auth.py: Google ID tokens verified against signing certificates fetched once per max-age."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from shared import auth
from shared.config import Settings

AUDIENCE = "https://emb-status-123.europe-west1.run.app"
OPERATOR = "emb-operator@proj.iam.gserviceaccount.com"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CertServer:
    """Our stand-in for Google's certificate endpoint: counts fetches, answers with a max-age."""

    def __init__(self, certs: dict[str, str], max_age: int | None = 3600, status: int = 200):
        self.certs, self.max_age, self.status, self.fetches = certs, max_age, status, 0

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        assert url == auth.GOOGLE_CERTS_URL and method == "GET"
        self.fetches += 1
        answer_headers = {"Cache-Control": f"public, max-age={self.max_age}"} if self.max_age is not None else {}
        return SimpleNamespace(status=self.status, headers=answer_headers, data=json.dumps(self.certs).encode())


@pytest.fixture(scope="module")
def signing():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return crypt.RSASigner.from_string(pem_key, key_id="k1"), {"k1": cert.public_bytes(serialization.Encoding.PEM).decode()}


def _token(signer, email=OPERATOR, audience=AUDIENCE) -> str:
    now = int(time.time())
    claims = {"iss": "https://accounts.google.com", "aud": audience, "email": email, "email_verified": True,
              "iat": now, "exp": now + 600, "sub": "1"}
    return jwt.encode(signer, claims).decode()


def _settings() -> Settings:
    """No local token, whatever the environment (a worker that ran the integration suite has the stack's)."""
    return Settings(poller_audience=AUDIENCE, poller_invoker_email=OPERATOR, poller_token="")


@pytest.fixture
def server(signing, monkeypatch):
    certs = CertServer(signing[1])
    clock = Clock()
    monkeypatch.setattr(auth, "_google_request", lambda: caching)
    caching = auth.CachingRequest(certs, frozenset({auth.GOOGLE_CERTS_URL}), clock=clock)
    return SimpleNamespace(certs=certs, clock=clock)


def test_the_certificates_are_fetched_once_for_many_verifications(signing, server):
    for _ in range(5):
        assert auth.authorize(f"Bearer {_token(signing[0])}", _settings()) == OPERATOR
    assert server.certs.fetches == 1


def test_they_are_fetched_again_after_their_max_age(signing, server):
    auth.authorize(f"Bearer {_token(signing[0])}", _settings())
    server.clock.now += 3599
    auth.authorize(f"Bearer {_token(signing[0])}", _settings())
    assert server.certs.fetches == 1
    server.clock.now += 2
    auth.authorize(f"Bearer {_token(signing[0])}", _settings())
    assert server.certs.fetches == 2


def test_the_checks_still_hold_with_cached_certificates(signing, server):
    auth.authorize(f"Bearer {_token(signing[0])}", _settings())
    with pytest.raises(auth.AuthError) as refused:
        auth.authorize(f"Bearer {_token(signing[0], email='someone@else.com')}", _settings())
    assert refused.value.status == 403
    with pytest.raises(auth.AuthError) as wrong_audience:
        auth.authorize(f"Bearer {_token(signing[0], audience='https://other.run.app')}", _settings())
    assert wrong_audience.value.status == 401
    assert server.certs.fetches == 1


def test_failed_answers_are_not_kept():
    failing = CertServer({}, status=503)
    caching = auth.CachingRequest(failing, clock=Clock())
    assert caching(auth.GOOGLE_CERTS_URL).status == 503
    assert caching(auth.GOOGLE_CERTS_URL).status == 503
    assert failing.fetches == 2


def test_an_answer_without_max_age_is_kept_briefly():
    certs, clock = CertServer({}, max_age=None), Clock()
    caching = auth.CachingRequest(certs, clock=clock)
    caching(auth.GOOGLE_CERTS_URL)
    clock.now += auth.DEFAULT_MAX_AGE - 1
    caching(auth.GOOGLE_CERTS_URL)
    clock.now += 2
    caching(auth.GOOGLE_CERTS_URL)
    assert certs.fetches == 2


def test_other_requests_pass_through():
    calls = []

    def transport(url, method="GET", **kwargs):
        calls.append((url, method))
        return SimpleNamespace(status=200, headers={"Cache-Control": "max-age=3600"}, data=b"{}")

    caching = auth.CachingRequest(transport, frozenset({auth.GOOGLE_CERTS_URL}), clock=Clock())
    caching("https://example.test/other")
    caching("https://example.test/other")
    caching(auth.GOOGLE_CERTS_URL, method="POST")
    assert len(calls) == 3


def test_the_url_is_the_one_google_auth_verifies_against():
    from google.oauth2 import id_token

    assert auth.GOOGLE_CERTS_URL == id_token._GOOGLE_OAUTH2_CERTS_URL
