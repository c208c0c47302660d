"""Lightning's side of the two tokens: it checks worker tokens and mints and checks run tokens.

Written independently of ``pool.lightning`` on purpose: the dev server is the yardstick the
client is measured against, so it must not share the client's code (a shared bug would pass).
The rules are Lightning's (reference §3 and §4): the worker token is HS256 signed with
``WORKER_SECRET`` used as-is; run tokens are RS256 with ``iss: "Lightning"``, ``id``,
``sub: "run:<id>"``, ``nbf`` and ``exp``, and are re-verified on every ``run:<id>`` join.
"""

from __future__ import annotations

import base64
import secrets
import time
import warnings

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

WORKER_ISSUER = "urn:openfn:worker"
RUN_ISSUER = "Lightning"


class TokenRefused(Exception):
    """A token failed verification; the message says which check failed."""


def b64decode_loose(text: str) -> bytes:
    """Decode base64 with or without padding: Lightning's mix task prints keys unpadded."""
    cleaned = "".join(text.split())
    return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4))


def b64encode_unpadded(data: bytes) -> str:
    """Base64 without ``=`` padding, the format of ``mix lightning.gen_worker_keys``."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def generate_secret() -> str:
    """A worker secret like Lightning's: base64 of 32 random bytes, used verbatim as a string."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def generate_private_key_b64() -> str:
    """A 2048-bit RSA key as base64 of its PKCS#1 PEM, the shape of ``WORKER_RUNS_PRIVATE_KEY``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    return b64encode_unpadded(pem)


def verify_worker_token(token: str, secret: str) -> dict:
    """Check a worker token as newer Lightning does at connect time; return its claims.

    Signature (HS256, the secret's UTF-8 bytes), ``iss == urn:openfn:worker``, and the presence
    of ``iat`` and ``worker_id``; an ``nbf`` in the future is refused. ``iat`` is not compared
    with the clock, as Lightning does not.
    """
    try:
        with warnings.catch_warnings():
            # a short secret is the operator's business; Lightning accepts it, so do we
            warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
            return jwt.decode(token, secret, algorithms=["HS256"], issuer=WORKER_ISSUER,
                              options={"require": ["iss", "iat", "worker_id"], "verify_iat": False})
    except jwt.PyJWTError as exc:
        raise TokenRefused(f"worker token refused: {exc}") from None


class RunTokens:
    """Mints and verifies run tokens with one RSA key pair."""

    def __init__(self, private_key_b64: str | None = None) -> None:
        self.private_key_b64 = private_key_b64 or generate_private_key_b64()
        try:
            self._private_key = serialization.load_pem_private_key(
                b64decode_loose(self.private_key_b64), password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"private key is not base64 of an RSA PEM: {exc}") from None
        if not isinstance(self._private_key, rsa.RSAPrivateKey):
            raise ValueError("private key is not an RSA key")
        self._public_key = self._private_key.public_key()
        public_pem = self._public_key.public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public_key_b64 = b64encode_unpadded(public_pem)

    def sign(self, run_id: str, lifetime_s: float) -> str:
        """A run token valid from now for ``lifetime_s`` seconds (newest Lightning's claims)."""
        now = int(time.time())
        claims = {"iss": RUN_ISSUER, "id": run_id, "sub": f"run:{run_id}", "nbf": now,
                  "iat": now, "exp": now + max(1, round(lifetime_s))}
        return jwt.encode(claims, self._private_key, algorithm="RS256")

    def verify(self, token: object, run_id: str) -> dict:
        """Check a run token for ``run:<run_id>`` as Lightning does on join; return its claims."""
        if not isinstance(token, str) or not token:
            raise TokenRefused("run token missing from the join payload")
        try:
            claims = jwt.decode(token, self._public_key, algorithms=["RS256"], issuer=RUN_ISSUER,
                                options={"require": ["iss", "id", "nbf", "exp", "sub"]})
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"run token refused: {exc}") from None
        if claims["id"] != run_id:
            raise TokenRefused(f"run token is for run {claims['id']!r}, not {run_id!r}")
        if claims["sub"] != f"run:{run_id}":
            raise TokenRefused(f"run token sub is {claims['sub']!r}, expected 'run:{run_id}'")
        return claims
