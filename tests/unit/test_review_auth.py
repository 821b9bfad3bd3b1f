"""Bearer tokens for the review API: what is accepted, what is refused and what the caller is
told. Tokens are signed here with throwaway keys; the OIDC issuer's JWKS is served from memory
(tests/integration/test_review_jwks.py serves it over HTTP)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import stat
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt import PyJWKClient
from jwt.exceptions import PyJWKClientConnectionError

from concord.config import ReviewSettings
from concord.review.access import Role
from concord.review.auth import (
    LOCAL_ISSUER,
    KeysUnavailable,
    LocalKeyError,
    LocalSigningKey,
    TokenVerifier,
    Unauthenticated,
    VerifierConfigError,
    bearer_token,
    jwk_thumbprint,
    role_from_claims,
)

ISSUER = "https://login.hospital.example/realms/clinical"
JWKS_URL = ISSUER + "/protocol/openid-connect/certs"
AUDIENCE = "concord-review"
ROLE_CLAIM = "concord_roles"
KID = "rsa-1"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk_of(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "f3b1c2d4",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "name": "Dana Reviewer",
        ROLE_CLAIM: ["offline_access", "reviewer"],
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def signed(
    payload: dict[str, Any], *, key: Any = RSA_KEY, alg: str = "RS256", kid: str | None = KID
) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A token PyJWT would refuse to make: alg none, or HS256 keyed with a public key."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = (
        b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()) if secret else ""
    )
    return f"{signing_input}.{signature}"


@pytest.fixture
def jwks(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The issuer's JWKS, served by PyJWKClient.fetch_data without a network."""
    served: dict[str, Any] = {"keys": [jwk_of(RSA_KEY, KID)]}
    monkeypatch.setattr(PyJWKClient, "fetch_data", lambda self: json.loads(json.dumps(served)))
    yield served


@pytest.fixture
def verifier(jwks: dict[str, Any]) -> TokenVerifier:
    return TokenVerifier(
        audience=AUDIENCE,
        role_claim=ROLE_CLAIM,
        issuer=ISSUER,
        jwks_url=JWKS_URL,
        jwks_cooldown_seconds=0,
    )


@pytest.fixture
def local_key(tmp_path: Path) -> LocalSigningKey:
    return LocalSigningKey.generate(tmp_path / "state" / "review-signing-key.pem")


def refused(verifier: TokenVerifier, token: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify_sync(token)
    assert token not in caught.value.message
    assert token.split(".")[1] not in caught.value.www_authenticate
    return caught.value


# --- accepted --------------------------------------------------------------------------------


def test_valid_token_names_the_principal(verifier: TokenVerifier) -> None:
    principal = asyncio.run(verifier.verify(signed(claims())))
    assert principal.subject == "f3b1c2d4"
    assert principal.role is Role.REVIEWER
    assert principal.issuer == ISSUER
    assert principal.display_name == "Dana Reviewer"
    assert principal.expires_at is not None


def test_verifier_is_the_apis_authenticator(verifier: TokenVerifier) -> None:
    principal = asyncio.run(verifier(f"Bearer {signed(claims())}"))
    assert principal.role is Role.REVIEWER


def test_clock_skew_within_leeway_is_accepted(verifier: TokenVerifier) -> None:
    now = int(time.time())
    verifier.verify_sync(signed(claims(exp=now - 10, iat=now - 400)))
    verifier.verify_sync(signed(claims(iat=now + 10, nbf=now + 10)))


def test_audience_may_be_a_list(verifier: TokenVerifier) -> None:
    verifier.verify_sync(signed(claims(aud=["account", AUDIENCE])))


# --- refused: time, issuer, audience ---------------------------------------------------------


def test_expired(verifier: TokenVerifier) -> None:
    now = int(time.time())
    error = refused(verifier, signed(claims(iat=now - 3600, exp=now - 60)))
    assert "expired" in error.message
    assert error.status_code == 401
    assert error.headers["WWW-Authenticate"].startswith('Bearer realm="concord-review"')
    assert 'error="invalid_token"' in error.www_authenticate


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_yet_valid(verifier: TokenVerifier, claim: str) -> None:
    error = refused(verifier, signed(claims(**{claim: int(time.time()) + 120})))
    assert "not valid yet" in error.message


def test_wrong_issuer(verifier: TokenVerifier) -> None:
    error = refused(verifier, signed(claims(iss="https://evil.example")))
    assert "issuer" in error.message and ISSUER in error.message
    assert "evil" not in error.message


def test_wrong_audience(verifier: TokenVerifier) -> None:
    error = refused(verifier, signed(claims(aud="account")))
    assert "audience" in error.message and AUDIENCE in error.message


# --- refused: keys and algorithms ------------------------------------------------------------


def test_unknown_kid(verifier: TokenVerifier) -> None:
    error = refused(verifier, signed(claims(), kid="rotated-away"))
    assert "unknown key id" in error.message


def test_no_kid(verifier: TokenVerifier) -> None:
    assert "kid" in refused(verifier, signed(claims(), kid=None)).message


def test_signed_by_another_key(verifier: TokenVerifier) -> None:
    error = refused(verifier, signed(claims(), key=OTHER_RSA_KEY))
    assert "signature" in error.message


def test_alg_none(verifier: TokenVerifier) -> None:
    token = hand_made({"alg": "none", "typ": "JWT", "kid": KID}, claims(), None)
    assert "'none' is not accepted" in refused(verifier, token).message


def test_hs256_keyed_with_the_public_key_is_refused(verifier: TokenVerifier) -> None:
    """Algorithm confusion: the public key (which anyone can fetch) used as an HMAC secret."""
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = hand_made({"alg": "HS256", "typ": "JWT", "kid": KID}, claims(), public_pem)
    assert "'HS256' is not accepted" in refused(verifier, token).message


def test_hs256_confusion_against_the_local_key(local_key: LocalSigningKey) -> None:
    verifier = TokenVerifier(audience=AUDIENCE, local_key=local_key.public_key)
    public_pem = local_key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    payload = claims(iss=LOCAL_ISSUER)
    token = hand_made({"alg": "HS256", "kid": local_key.kid}, payload, public_pem)
    refused(verifier, token)


def test_algorithm_other_than_the_keys_is_refused(verifier: TokenVerifier) -> None:
    """The JWK says RS256: a PS256 signature by the same key is not accepted."""
    error = refused(verifier, signed(claims(), alg="PS256"))
    assert "algorithm" in error.message


def test_symmetric_key_in_the_jwks_is_never_used(
    verifier: TokenVerifier, jwks: dict[str, Any]
) -> None:
    jwks["keys"].append({"kty": "oct", "kid": "hmac", "k": b64(b"s" * 32), "alg": "HS256"})
    token = signed(claims(), key=b"s" * 32, alg="HS256", kid="hmac")
    refused(verifier, token)


def test_not_a_jwt(verifier: TokenVerifier) -> None:
    assert "not a JWT" in refused(verifier, "abc.def").message


def test_jwks_unreachable_is_503_not_401(
    verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(self: PyJWKClient) -> Any:
        raise PyJWKClientConnectionError("connection refused")

    monkeypatch.setattr(PyJWKClient, "fetch_data", down)
    with pytest.raises(KeysUnavailable) as caught:
        verifier.verify_sync(signed(claims()))
    assert caught.value.status_code == 503
    assert caught.value.headers == {"Retry-After": "30"}
    assert JWKS_URL in caught.value.detail
    assert JWKS_URL not in caught.value.message


# --- refused: claims ---------------------------------------------------------------------------


@pytest.mark.parametrize("claim", ["sub", "exp", "iat", "aud"])
def test_missing_required_claim(verifier: TokenVerifier, claim: str) -> None:
    error = refused(verifier, signed(claims(**{claim: None})))
    assert f"'{claim}'" in error.message


def test_missing_iss(verifier: TokenVerifier) -> None:
    assert "'iss'" in refused(verifier, signed(claims(iss=None))).message


def test_empty_sub(verifier: TokenVerifier) -> None:
    assert "'sub'" in refused(verifier, signed(claims(sub=" "))).message


def test_missing_role_claim(verifier: TokenVerifier) -> None:
    error = refused(verifier, signed(claims(**{ROLE_CLAIM: None})))
    assert f"no '{ROLE_CLAIM}' claim" in error.message
    assert "reviewer" in error.message


@pytest.mark.parametrize("value", ["superuser", ["offline_access"], []])
def test_unknown_role(verifier: TokenVerifier, value: Any) -> None:
    assert (
        "names no Concord role" in refused(verifier, signed(claims(**{ROLE_CLAIM: value}))).message
    )


def test_ambiguous_roles_are_refused(verifier: TokenVerifier) -> None:
    error = refused(verifier, signed(claims(**{ROLE_CLAIM: ["reviewer", "auditor"]})))
    assert "several Concord roles (reviewer, auditor)" in error.message


def test_role_claim_of_the_wrong_type(verifier: TokenVerifier) -> None:
    assert "string or a list" in refused(verifier, signed(claims(**{ROLE_CLAIM: 3}))).message


@pytest.mark.parametrize(
    ("claim", "payload", "role"),
    [
        ("concord_roles", {"concord_roles": "sre"}, Role.SRE),
        ("concord_roles", {"concord_roles": ["sre", "sre"]}, Role.SRE),
        ("realm_access.roles", {"realm_access": {"roles": ["x", "auditor"]}}, Role.AUDITOR),
        ("https://concord.example/roles", {"https://concord.example/roles": "admin"}, Role.ADMIN),
    ],
)
def test_role_claim_shapes(claim: str, payload: dict[str, Any], role: Role) -> None:
    assert role_from_claims(payload, claim) is role


# --- the Authorization header ---------------------------------------------------------------


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer   abc.def.ghi  ") == "abc.def.ghi"


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (None, None),
        ("", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer", "invalid_token"),
        ("Bearer a b", "invalid_token"),
        ('Bearer a"b', "invalid_token"),
        ("Bearer " + "a" * 20000, "invalid_token"),
    ],
)
def test_bearer_header_refused(header: str | None, error: str | None) -> None:
    with pytest.raises(Unauthenticated) as caught:
        bearer_token(header)
    assert caught.value.error == error
    challenge = caught.value.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="concord-review"')
    assert ("error=" in challenge) is (error is not None)
    assert "bearer" in caught.value.message.lower()


# --- configuration ---------------------------------------------------------------------------


def test_nothing_configured_is_a_config_error() -> None:
    with pytest.raises(VerifierConfigError, match="CONCORD_OIDC_ISSUER"):
        TokenVerifier(audience=AUDIENCE)


@pytest.mark.parametrize(
    "issuer", ["http://login.hospital.example/realms/x", "file:///etc/passwd", "login.example"]
)
def test_issuer_must_be_https_unless_loopback(issuer: str) -> None:
    with pytest.raises(VerifierConfigError, match="https://"):
        TokenVerifier(audience=AUDIENCE, issuer=issuer)
    TokenVerifier(audience=AUDIENCE, issuer="http://127.0.0.1:8080/realms/x")


def test_from_settings_with_the_local_key(local_key: LocalSigningKey) -> None:
    settings = ReviewSettings(
        database_url="postgresql://user@host:5432/concord",
        local_key_path=local_key.path,
    )
    verifier = TokenVerifier.from_settings(settings)
    token = local_key.issue("alice", Role.CLINICIAN, timedelta(minutes=5))
    principal = verifier.verify_sync(token)
    assert (principal.subject, principal.role, principal.issuer) == (
        "alice",
        Role.CLINICIAN,
        LOCAL_ISSUER,
    )


def test_from_settings_with_a_missing_key_file(tmp_path: Path) -> None:
    settings = ReviewSettings(
        database_url="postgresql://user@host:5432/concord",
        local_key_path=tmp_path / "nope.pem",
    )
    with pytest.raises(VerifierConfigError, match=r"CONCORD_LOCAL_KEY_PATH.*concord token issue"):
        TokenVerifier.from_settings(settings)


# --- the local signing key --------------------------------------------------------------------


def test_local_key_file_is_private(local_key: LocalSigningKey) -> None:
    assert local_key.path is not None
    assert stat.S_IMODE(local_key.path.stat().st_mode) == 0o600
    again, created = LocalSigningKey.load_or_create(local_key.path)
    assert not created and again.kid == local_key.kid


def test_local_key_readable_by_others_is_refused(local_key: LocalSigningKey) -> None:
    assert local_key.path is not None
    local_key.path.chmod(0o644)
    with pytest.raises(LocalKeyError, match="chmod 600"):
        LocalSigningKey.load(local_key.path)


def test_local_kid_is_the_rfc7638_thumbprint(local_key: LocalSigningKey) -> None:
    numbers = local_key.public_key.public_numbers()
    members = {
        "crv": "P-256",
        "kty": "EC",
        "x": b64(numbers.x.to_bytes(32, "big")),
        "y": b64(numbers.y.to_bytes(32, "big")),
    }
    canonical = f'{{"crv":"{members["crv"]}","kty":"EC","x":"{members["x"]}","y":"{members["y"]}"}}'
    assert local_key.kid == b64(hashlib.sha256(canonical.encode()).digest())
    assert jwt.get_unverified_header(local_key.issue("a", Role.SRE, timedelta(minutes=1))) == {
        "alg": "ES256",
        "kid": local_key.kid,
        "typ": "JWT",
    }


def test_token_of_a_recreated_local_key_is_refused(local_key: LocalSigningKey) -> None:
    verifier = TokenVerifier(audience=AUDIENCE, local_key=local_key.public_key)
    stranger = LocalSigningKey(ec.generate_private_key(ec.SECP256R1()))
    error = refused(verifier, stranger.issue("a", Role.ADMIN, timedelta(minutes=1)))
    assert "concord token issue" in error.message
    assert jwk_thumbprint(stranger.public_key) != local_key.kid


def test_local_tokens_refused_where_only_the_oidc_issuer_is_configured(
    verifier: TokenVerifier, local_key: LocalSigningKey
) -> None:
    error = refused(verifier, local_key.issue("a", Role.REVIEWER, timedelta(minutes=1)))
    assert "issuer" in error.message


def test_both_issuers_each_with_its_own_keys(
    jwks: dict[str, Any], local_key: LocalSigningKey
) -> None:
    verifier = TokenVerifier(
        audience=AUDIENCE, issuer=ISSUER, jwks_url=JWKS_URL, local_key=local_key.public_key
    )
    assert verifier.verify_sync(signed(claims())).issuer == ISSUER
    local = local_key.issue("a", Role.REVIEWER, timedelta(minutes=1))
    assert verifier.verify_sync(local).issuer == LOCAL_ISSUER
    # An OIDC-signed token claiming the local issuer is checked against the local key only.
    refused(verifier, signed(claims(iss=LOCAL_ISSUER), kid=local_key.kid))


def test_the_cli_names_the_same_key_file() -> None:
    from concord.cli import token
    from concord.review import auth

    assert token.LOCAL_KEY_FILE == auth.LOCAL_KEY_FILE
