"""Worker and run tokens: the two JWTs of Lightning's worker protocol (reference §3, §4).

The worker token proves to Lightning that this worker knows ``WORKER_SECRET``; the run token
proves to the worker that a claimed run really comes from Lightning. Both formats are fixed by
Lightning, so the claims and algorithms here are not ours to choose.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger(__name__)

WORKER_ISSUER = "urn:openfn:worker"
RUN_TOKEN_ISSUER = "Lightning"
RUN_TOKEN_LEEWAY_S = 5

# Short, friendly words so an operator can tell workers apart in Lightning's logs
# (ws-worker's ids look like "curly-parrot-jumps").
_ADJECTIVES = (
    "amber", "brave", "calm", "curly", "dusty", "eager", "fuzzy", "gentle", "happy", "icy",
    "jolly", "keen", "lucky", "mellow", "nimble", "odd", "proud", "quiet", "rapid", "shiny",
    "tidy", "urban", "vivid", "witty", "young", "zesty",
)
_ANIMALS = (
    "badger", "camel", "dingo", "eagle", "ferret", "gecko", "heron", "ibis", "jackal", "koala",
    "lemur", "marmot", "newt", "otter", "parrot", "quail", "raven", "stoat", "tapir", "urchin",
    "vole", "walrus", "yak", "zebra",
)
_VERBS = (
    "bakes", "climbs", "dances", "dives", "hops", "hums", "jumps", "knits", "leaps", "naps",
    "paints", "roams", "runs", "sings", "skates", "swims", "waits", "whistles", "yawns",
)


class RunTokenError(Exception):
    """A run token failed verification; the run must not be executed (its message says why)."""


class PublicKeyError(ValueError):
    """``WORKER_LIGHTNING_PUBLIC_KEY`` cannot be read as a base64-encoded PEM RSA public key."""


def new_worker_id() -> str:
    """A random human-readable id like ``curly-parrot-jumps`` for the worker token."""
    return "-".join(secrets.choice(words) for words in (_ADJECTIVES, _ANIMALS, _VERBS))


def make_worker_token(secret: str, worker_id: str, now: float | None = None) -> str:
    """The HS256 worker token; the secret's UTF-8 bytes are the key (never base64-decoded).

    Claims are exactly ``worker_id``, ``iat`` and ``iss``: no ``exp`` because the token is made
    once and reused on every reconnect, no ``nbf`` because a clock ahead of Lightning's would
    make it refuse the token.
    """
    iat = int(time.time() if now is None else now)
    claims = {"worker_id": worker_id, "iat": iat, "iss": WORKER_ISSUER}
    return jwt.encode(claims, secret, algorithm="HS256")


def _b64decode_loose(text: str) -> bytes:
    """Base64 with or without ``=`` padding (Lightning's mix task strips it)."""
    compact = "".join(text.split())
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PublicKeyError(f"WORKER_LIGHTNING_PUBLIC_KEY is not valid base64: {exc}") from None


def load_public_key(value: str) -> rsa.RSAPublicKey:
    """Read a base64 PEM (padded or not), PKCS#1 ``RSA PUBLIC KEY`` or SPKI ``PUBLIC KEY``.

    A bare PEM is accepted too, since operators paste whichever they have at hand.
    """
    text = value.strip()
    pem = text.encode() if text.startswith("-----BEGIN") else _b64decode_loose(text)
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise PublicKeyError(
            f"WORKER_LIGHTNING_PUBLIC_KEY is not a PEM public key ({exc}); expected the base64 "
            "of a '-----BEGIN PUBLIC KEY-----' or '-----BEGIN RSA PUBLIC KEY-----' block"
        ) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise PublicKeyError("WORKER_LIGHTNING_PUBLIC_KEY is not an RSA key (run tokens are RS256)")
    return key


_warned_unverified = False


def _warn_unverified_once() -> None:
    global _warned_unverified
    if not _warned_unverified:
        _warned_unverified = True
        log.warning("WORKER_LIGHTNING_PUBLIC_KEY is not set: skipping run token validation")


def split_public_keys(value: str) -> list[str]:
    """One key or several: PEM blocks one after another, or base64 keys separated by commas.

    Two keys are how a key switch works without refusing runs: Lightning signs with the old
    key until it restarts with the new one, so the worker accepts both meanwhile.
    """
    text = value.strip()
    if text.startswith("-----BEGIN"):
        marker = "-----BEGIN"
        return [marker + part for part in text.split(marker) if part.strip()]
    return [part for part in (p.strip() for p in text.split(",")) if part]


class RunTokenVerifier:
    """Checks run tokens the way ws-worker does: RS256 signature, ``iss``, ``exp``/``nbf``.

    It does not compare the token's ``id`` with the run: neither does ws-worker, and Lightning
    checks it again on the run channel join. With no key, tokens pass unverified and a warning
    is logged once per process. With several keys (a key switch), a token passes when its
    signature verifies with any of them; its claims are then checked as usual.
    """

    def __init__(self, public_key_b64: str | None) -> None:
        self._keys = [load_public_key(key) for key in split_public_keys(public_key_b64 or "")]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def key_count(self) -> int:
        return len(self._keys)

    def verify(self, token: str) -> dict[str, Any] | None:
        """The token's claims, or ``None`` when verification is off; raises RunTokenError."""
        if not self._keys:
            _warn_unverified_once()
            return None
        for key in self._keys:
            try:
                return jwt.decode(token, key, algorithms=["RS256"], issuer=RUN_TOKEN_ISSUER,
                                  leeway=RUN_TOKEN_LEEWAY_S, options={"require": ["iss"]})
            except jwt.InvalidSignatureError:
                continue  # perhaps signed with the other key of a switch
            except jwt.ExpiredSignatureError:
                raise RunTokenError("run token has expired") from None
            except jwt.ImmatureSignatureError:
                raise RunTokenError("run token is not valid yet (nbf in the future)") from None
            except jwt.InvalidIssuerError:
                raise RunTokenError(f"run token issuer is not {RUN_TOKEN_ISSUER!r}") from None
            except jwt.PyJWTError as exc:
                raise RunTokenError(f"run token is invalid: {exc}") from None
        which = "WORKER_LIGHTNING_PUBLIC_KEY" if len(self._keys) == 1 else \
            f"any of the {len(self._keys)} keys of WORKER_LIGHTNING_PUBLIC_KEY"
        raise RunTokenError(f"run token signature does not match {which}")


def generate_worker_keys() -> dict[str, str]:
    """Fresh keys in the formats of Lightning's ``mix lightning.gen_worker_keys``.

    ``WORKER_SECRET`` is the base64 of 32 random bytes (used as-is, never decoded); the RSA
    keys are 2048-bit, each the base64 of its PEM without padding.
    """
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "WORKER_SECRET": base64.b64encode(secrets.token_bytes(32)).decode(),
        "WORKER_RUNS_PRIVATE_KEY": base64.b64encode(private_pem).decode().rstrip("="),
        "WORKER_LIGHTNING_PUBLIC_KEY": base64.b64encode(public_pem).decode().rstrip("="),
    }
