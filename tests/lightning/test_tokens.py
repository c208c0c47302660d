"""Worker and run tokens, round-tripped with real keys (reference §3, §4)."""

from __future__ import annotations

import base64
import logging
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pool.lightning import tokens
from pool.lightning.tokens import (
    PublicKeyError,
    RunTokenError,
    RunTokenVerifier,
    generate_worker_keys,
    load_public_key,
    make_worker_token,
    new_worker_id,
)

SECRET = "a-worker-secret-long-enough-for-hs256=="


@pytest.fixture(scope="module")
def keypair() -> tuple[rsa.RSAPrivateKey, bytes, bytes]:
    """A private key and its public PEM as SPKI and as PKCS#1."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key()
    spki = public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
    pkcs1 = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    return private, spki, pkcs1


def run_token(private: rsa.RSAPrivateKey, **claims: object) -> str:
    now = int(time.time())
    body = {"id": "run-1", "iss": "Lightning", "nbf": now, "exp": now + 60, "sub": "run:run-1"}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, private, algorithm="RS256")


def b64(pem: bytes, padded: bool) -> str:
    text = base64.b64encode(pem).decode()
    return text if padded else text.rstrip("=")


def test_worker_token_has_exactly_lightnings_claims() -> None:
    token = make_worker_token(SECRET, "curly-parrot-jumps", now=1_700_000_000)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims == {"worker_id": "curly-parrot-jumps", "iat": 1_700_000_000,
                      "iss": "urn:openfn:worker"}
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_worker_token_uses_the_secret_as_is_not_base64_decoded() -> None:
    secret = base64.b64encode(b"x" * 40).decode()
    token = make_worker_token(secret, "w")
    jwt.decode(token, secret, algorithms=["HS256"])
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, base64.b64decode(secret), algorithms=["HS256"])
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, SECRET + "x", algorithms=["HS256"])


def test_worker_ids_are_random_lowercase_words() -> None:
    ids = {new_worker_id() for _ in range(20)}
    assert len(ids) > 1
    for worker_id in ids:
        words = worker_id.split("-")
        assert len(words) == 3 and all(w.isalpha() and w.islower() for w in words)


@pytest.mark.parametrize("form", ["spki", "pkcs1"])
@pytest.mark.parametrize("padded", [True, False])
def test_run_token_verifies_with_padded_or_unpadded_keys(keypair, form, padded) -> None:
    private, spki, pkcs1 = keypair
    verifier = RunTokenVerifier(b64(spki if form == "spki" else pkcs1, padded))
    assert verifier.enabled
    claims = verifier.verify(run_token(private))
    assert claims["id"] == "run-1" and claims["iss"] == "Lightning"


def test_run_token_signed_by_another_key_is_refused(keypair) -> None:
    _, spki, _ = keypair
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(RunTokenError, match="signature does not match"):
        RunTokenVerifier(b64(spki, False)).verify(run_token(other))


def test_run_token_with_wrong_issuer_is_refused(keypair) -> None:
    private, spki, _ = keypair
    with pytest.raises(RunTokenError, match="issuer is not 'Lightning'"):
        RunTokenVerifier(b64(spki, False)).verify(run_token(private, iss="Someone"))


def test_run_token_expiry_allows_five_seconds_of_clock_skew(keypair) -> None:
    private, spki, _ = keypair
    verifier = RunTokenVerifier(b64(spki, False))
    now = int(time.time())
    verifier.verify(run_token(private, exp=now - 2, nbf=now - 60))  # inside the leeway
    verifier.verify(run_token(private, nbf=now + 2))
    with pytest.raises(RunTokenError, match="expired"):
        verifier.verify(run_token(private, exp=now - 30, nbf=now - 60))
    with pytest.raises(RunTokenError, match="not valid yet"):
        verifier.verify(run_token(private, nbf=now + 60, exp=now + 120))


def test_garbage_run_token_is_a_clear_error(keypair) -> None:
    _, spki, _ = keypair
    with pytest.raises(RunTokenError, match="run token is invalid"):
        RunTokenVerifier(b64(spki, False)).verify("x.y.z")


def test_without_a_key_tokens_pass_and_a_warning_is_logged_once(caplog, monkeypatch) -> None:
    monkeypatch.setattr(tokens, "_warned_unverified", False)
    verifier = RunTokenVerifier(None)
    with caplog.at_level(logging.WARNING, logger="pool.lightning.tokens"):
        assert verifier.verify("x.y.z") is None
        assert RunTokenVerifier("").verify("x.y.z") is None
    warnings = [r for r in caplog.records if "skipping run token validation" in r.message]
    assert len(warnings) == 1


@pytest.mark.parametrize("value, match", [
    ("not base64 at all!!", "not valid base64"),
    (base64.b64encode(b"hello").decode(), "not a PEM public key"),
])
def test_unreadable_public_key_is_a_clear_error(value, match) -> None:
    with pytest.raises(PublicKeyError, match=match):
        load_public_key(value)


def test_generated_keys_work_together_like_lightnings_mix_task(keypair) -> None:
    keys = generate_worker_keys()
    assert list(keys) == ["WORKER_SECRET", "WORKER_RUNS_PRIVATE_KEY",
                          "WORKER_LIGHTNING_PUBLIC_KEY"]
    assert len(base64.b64decode(keys["WORKER_SECRET"])) == 32
    assert not keys["WORKER_RUNS_PRIVATE_KEY"].endswith("=")
    assert not keys["WORKER_LIGHTNING_PUBLIC_KEY"].endswith("=")
    private_pem = base64.b64decode(keys["WORKER_RUNS_PRIVATE_KEY"] + "==")
    private = serialization.load_pem_private_key(private_pem, password=None)
    assert private.key_size == 2048
    claims = RunTokenVerifier(keys["WORKER_LIGHTNING_PUBLIC_KEY"]).verify(run_token(private))
    assert claims["id"] == "run-1"


def test_two_public_keys_while_lightning_switches_keys(keypair) -> None:
    """A token signed with either key of a switch passes; one signed with neither does not,
    and a good signature with bad claims is refused for its claims, not tried again."""
    old, old_spki, _ = keypair
    new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new_spki = new.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for value in (f"{b64(old_spki, False)},{b64(new_spki, True)}",   # base64, comma-separated
                  (old_spki + new_spki).decode()):                   # two PEM blocks (a file)
        verifier = RunTokenVerifier(value)
        assert verifier.key_count == 2
        assert verifier.verify(run_token(old))["id"] == "run-1"
        assert verifier.verify(run_token(new))["id"] == "run-1"
        with pytest.raises(RunTokenError, match="does not match any of the 2 keys"):
            verifier.verify(run_token(stranger))
        with pytest.raises(RunTokenError, match="has expired"):
            now = int(time.time())
            verifier.verify(run_token(new, exp=now - 60, nbf=now - 120))
    with pytest.raises(PublicKeyError):
        RunTokenVerifier(f"{b64(old_spki, False)},not-a-key")
