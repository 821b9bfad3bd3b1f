"""Bearer tokens for the review service: who the caller is, from a JWT the API can verify.

Two kinds of issuer, either or both:

* an OpenID Connect issuer (CONCORD_OIDC_ISSUER): the hospital's identity provider; its keys
  come from its JWKS (CONCORD_OIDC_JWKS_URL, or the `jwks_uri` of the issuer's
  /.well-known/openid-configuration), fetched and cached by PyJWT's PyJWKClient, fetched again
  when a token names a key id the cached set lacks (at most once per cooldown);
* the local stack's key (CONCORD_LOCAL_KEY_PATH, an EC P-256 key `concord token issue` creates
  and signs with): tokens whose `iss` is "concord-local".

A token's `iss` says which of the two verifies it, and only that one's keys are tried. Only
asymmetric algorithms are accepted (RS*, PS*, ES*, EdDSA): never HS* (a public key used as an
HMAC secret is the classic algorithm-confusion forgery) nor `none`; a JWKS key fixes its
algorithm, the local key is ES256 only. Required claims: exp, iat, iss, aud, sub, and the role
claim (CONCORD_OIDC_ROLE_CLAIM), with 30 seconds of leeway for clock skew.

Failures raise Unauthenticated (401, with a WWW-Authenticate header) whose message says what
to fix and never repeats the token or a claim's value; an issuer whose keys cannot be fetched
raises KeysUnavailable (503): the token may be fine.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt import PyJWK, PyJWKClient
from jwt.exceptions import (
    InvalidSubjectError,
    PyJWKClientConnectionError,
    PyJWKClientError,
    PyJWKSetError,
)

from concord.config import ReviewSettings, env_name, is_loopback
from concord.review.access import Principal, ReviewAccessError, Role

ACCEPTED_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
REQUIRED_CLAIMS: tuple[str, ...] = ("exp", "iat", "iss", "aud", "sub")
LEEWAY_SECONDS = 30
LOCAL_ISSUER = "concord-local"
LOCAL_ALGORITHM = "ES256"
# Longer than any real access token; refused before anything is decoded.
MAX_TOKEN_LENGTH = 16 * 1024
REALM = "concord-review"
DEFAULT_AUDIENCE: str = ReviewSettings.model_fields["oidc_audience"].default
DEFAULT_ROLE_CLAIM: str = ReviewSettings.model_fields["oidc_role_claim"].default
# Where the local stack keeps its signing key, in its state folder.
LOCAL_KEY_FILE = "review-signing-key.pem"

_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_ROLES = ", ".join(Role)
_DISCOVERY_MAX_BYTES = 1024 * 1024


class Unauthenticated(ReviewAccessError):
    """401: no usable bearer token. `error` is RFC 6750's code (None when the request carried
    no credentials at all); `www_authenticate` is the header value to send."""

    status_code = 401

    def __init__(self, message: str, *, error: str | None = "invalid_token") -> None:
        super().__init__(message)
        self.error = error

    @property
    def www_authenticate(self) -> str:
        parts = [f'realm="{REALM}"']
        if self.error is not None:
            description = self.message.replace("\\", "").replace('"', "'")
            parts += [f'error="{self.error}"', f'error_description="{description}"']
        return "Bearer " + ", ".join(parts)

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.www_authenticate}


class KeysUnavailable(ReviewAccessError):
    """503: the issuer's keys could not be fetched (network, bad discovery document, empty
    JWKS): nothing is known about the token, so do not tell the caller it is bad. `message`
    is for the caller; `detail` (URLs, the network error) is for the service's log."""

    status_code = 503
    retry_after_seconds = 30

    def __init__(self, detail: str) -> None:
        super().__init__(
            "the identity provider's signing keys cannot be fetched right now; try again shortly"
        )
        self.detail = detail

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class VerifierConfigError(ValueError):
    """Settings a verifier cannot be built from; one line naming the CONCORD_* variable."""


class LocalKeyError(ValueError):
    """The local signing key file is missing, unreadable, of the wrong kind or too open."""


def bearer_token(authorization_header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; Unauthenticated otherwise."""
    if authorization_header is None or not authorization_header.strip():
        raise Unauthenticated(
            "no credentials: send the header 'Authorization: Bearer <token>'", error=None
        )
    scheme, _, rest = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated(
            "the Authorization header must use the Bearer scheme: 'Authorization: Bearer <token>'",
            error=None,
        )
    token = rest.strip()
    if not token:
        raise Unauthenticated("the Authorization header has no token after 'Bearer'")
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthenticated(f"the bearer token is longer than {MAX_TOKEN_LENGTH} characters")
    if not _TOKEN68.fullmatch(token):
        raise Unauthenticated(
            "the bearer token is malformed: one JWT (base64url parts joined by dots), no spaces"
        )
    return token


# --- keys -------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public key as a JWK (RFC 7517): kty, crv, x, y."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise LocalKeyError("the local signing key must be an EC P-256 key")
    numbers = key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }


def jwk_thumbprint(key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of an EC P-256 public key: the key id."""
    canonical = json.dumps(public_jwk(key), sort_keys=True, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def _read_pem(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise LocalKeyError(f"{path}: no such key file; `concord token issue` creates it") from None
    except OSError as error:
        raise LocalKeyError(f"{path}: cannot read the key file ({error.strerror})") from None


def load_local_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """The public half of the local signing key (a private or a public key PEM at `path`)."""
    data = _read_pem(path)
    key: Any
    try:
        key = serialization.load_pem_private_key(data, password=None).public_key()
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            raise LocalKeyError(f"{path}: not a PEM key without a passphrase") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise LocalKeyError(f"{path}: the local signing key must be an EC P-256 key")
    return key


@dataclass(frozen=True, slots=True)
class LocalSigningKey:
    """The local stack's token-signing key: EC P-256 (ES256), a PEM file of mode 0600."""

    private_key: ec.EllipticCurvePrivateKey
    path: Path | None = None

    @classmethod
    def generate(cls, path: Path) -> LocalSigningKey:
        """A new key written to `path` (created 0600; FileExistsError if it exists)."""
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, pem)
        finally:
            os.close(fd)
        return cls(key, path)

    @classmethod
    def load(cls, path: Path) -> LocalSigningKey:
        data = _read_pem(path)
        mode = path.stat().st_mode
        if os.name == "posix" and mode & 0o077:
            raise LocalKeyError(
                f"{path}: others may read this signing key (mode {mode & 0o777:o}); "
                f"run 'chmod 600 {path}'"
            )
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise LocalKeyError(f"{path}: not a PEM private key without a passphrase") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise LocalKeyError(f"{path}: the local signing key must be an EC P-256 key")
        return cls(key, path)

    @classmethod
    def load_or_create(cls, path: Path) -> tuple[LocalSigningKey, bool]:
        """The key at `path`, created first if there is none; and whether it was created."""
        try:
            return cls.generate(path), True
        except FileExistsError:
            return cls.load(path), False

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    @property
    def kid(self) -> str:
        return jwk_thumbprint(self.public_key)

    def issue(
        self,
        user: str,
        role: Role,
        ttl: timedelta,
        *,
        audience: str = DEFAULT_AUDIENCE,
        role_claim: str = DEFAULT_ROLE_CLAIM,
        now: datetime | None = None,
    ) -> str:
        """A token for `user` in `role`, valid for `ttl`, that a verifier configured with
        this key (CONCORD_LOCAL_KEY_PATH) and `audience` accepts."""
        if not user.strip() or any(ord(c) < 32 for c in user):
            raise ValueError("the user name must be non-empty, without control characters")
        if ttl <= timedelta(0):
            raise ValueError("the token's lifetime must be positive")
        issued = (now or datetime.now(UTC)).replace(microsecond=0)
        claims = {
            "iss": LOCAL_ISSUER,
            "sub": user,
            "aud": audience,
            "iat": int(issued.timestamp()),
            "nbf": int(issued.timestamp()),
            "exp": int((issued + ttl).timestamp()),
            "jti": str(uuid.uuid4()),
            "preferred_username": user,
            role_claim: str(Role(role)),
        }
        return jwt.encode(
            claims,
            self.private_key,
            algorithm=LOCAL_ALGORITHM,
            headers={"kid": self.kid, "typ": "JWT"},
        )


# --- the verifier -----------------------------------------------------------------------------


def _check_url(url: str, variable: str) -> str:
    """https, or http to a loopback host only (keys fetched in clear text could be swapped)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "https" and parsed.hostname:
        return url
    if parsed.scheme == "http" and parsed.hostname and is_loopback(parsed.hostname):
        return url
    raise VerifierConfigError(
        f"{variable}: must be an https:// URL (http:// only to a loopback address), "
        f"e.g. https://login.hospital.example/realms/clinical"
    )


class _IssuerKeys:
    """An OIDC issuer's signing keys: its JWKS, found by discovery when not configured."""

    def __init__(
        self,
        issuer: str,
        jwks_url: str | None,
        *,
        cache_seconds: float,
        cooldown_seconds: float,
        timeout_seconds: float,
    ) -> None:
        self.issuer = issuer
        self._cache_seconds = cache_seconds
        self._cooldown_seconds = cooldown_seconds
        self._timeout = timeout_seconds
        self._lock = threading.Lock()
        self._failed_at: float | None = None
        self._client = self._new_client(jwks_url) if jwks_url else None

    def _new_client(self, jwks_url: str) -> PyJWKClient:
        return PyJWKClient(
            jwks_url,
            cache_jwk_set=True,
            lifespan=self._cache_seconds,
            timeout=self._timeout,
            cooldown_duration=self._cooldown_seconds,
        )

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    def _discover(self) -> PyJWKClient:
        with self._lock:
            if self._client is not None:
                return self._client
            now = time.monotonic()
            if self._failed_at is not None and now - self._failed_at < self._cooldown_seconds:
                raise KeysUnavailable(
                    f"the issuer's discovery document ({self.discovery_url}) could not be "
                    "read a moment ago; try again shortly"
                )
            try:
                jwks_uri = self._jwks_uri()
            except KeysUnavailable:
                self._failed_at = now
                raise
            self._client = self._new_client(jwks_uri)
            return self._client

    def _jwks_uri(self) -> str:
        url = self.discovery_url
        # The issuer URL was checked: https, or http to a loopback address.
        request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                document = json.loads(response.read(_DISCOVERY_MAX_BYTES))
        except (OSError, ValueError) as error:
            raise KeysUnavailable(
                f"cannot read the issuer's discovery document {url}: {error}"
            ) from None
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            raise KeysUnavailable(
                f"the discovery document {url} does not name the issuer {self.issuer} "
                "(its 'issuer' must equal CONCORD_OIDC_ISSUER exactly)"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise KeysUnavailable(f"the discovery document {url} has no jwks_uri")
        try:
            return _check_url(jwks_uri, f"jwks_uri of {url}")
        except VerifierConfigError as error:
            raise KeysUnavailable(str(error)) from None

    def signing_key(self, kid: str) -> PyJWK:
        client = self._discover()
        try:
            return client.get_signing_key(kid)
        except PyJWKClientConnectionError as error:
            raise KeysUnavailable(f"cannot fetch the issuer's JWKS {client.uri}: {error}") from None
        except (PyJWKClientError, PyJWKSetError) as error:
            if str(error).startswith("Unable to find a signing key"):
                raise Unauthenticated(
                    "unknown key id: the issuer's JWKS has no key with the token's 'kid' "
                    "(a key rotated out, or a token from another issuer): get a new token"
                ) from None
            raise KeysUnavailable(f"the issuer's JWKS {client.uri} is unusable: {error}") from None


class TokenVerifier:
    """Verifies bearer tokens and names the caller: `await verify(token) -> Principal`."""

    def __init__(
        self,
        *,
        audience: str,
        role_claim: str = DEFAULT_ROLE_CLAIM,
        issuer: str | None = None,
        jwks_url: str | None = None,
        local_key: ec.EllipticCurvePublicKey | None = None,
        leeway_seconds: float = LEEWAY_SECONDS,
        jwks_cache_seconds: float = 300,
        jwks_cooldown_seconds: float = 30,
        http_timeout_seconds: float = 5,
    ) -> None:
        issuer_var = env_name(ReviewSettings, "oidc_issuer")
        if issuer is None and local_key is None:
            raise VerifierConfigError(
                f"{issuer_var}: not set, and no local signing key "
                f"({env_name(ReviewSettings, 'local_key_path')}): no token could be verified"
            )
        if jwks_url is not None and issuer is None:
            raise VerifierConfigError(
                f"{env_name(ReviewSettings, 'oidc_jwks_url')} is set without {issuer_var}: "
                "set the issuer its tokens name in 'iss'"
            )
        if issuer == LOCAL_ISSUER:
            raise VerifierConfigError(f"{issuer_var}: {LOCAL_ISSUER!r} is the local stack's own")
        self.audience = audience
        self.role_claim = role_claim
        self.leeway_seconds = leeway_seconds
        self.local_key = local_key
        self.issuer = issuer
        self._issuer_keys: _IssuerKeys | None = None
        if issuer is not None:
            _check_url(issuer, issuer_var)
            if jwks_url is not None:
                _check_url(jwks_url, env_name(ReviewSettings, "oidc_jwks_url"))
            self._issuer_keys = _IssuerKeys(
                issuer,
                jwks_url,
                cache_seconds=jwks_cache_seconds,
                cooldown_seconds=jwks_cooldown_seconds,
                timeout_seconds=http_timeout_seconds,
            )
        self._local_kid = jwk_thumbprint(local_key) if local_key is not None else None

    @classmethod
    def from_settings(cls, settings: ReviewSettings, **tuning: Any) -> TokenVerifier:
        """A verifier for the OIDC issuer and/or the local key the settings name."""
        local_key = None
        if settings.local_key_path is not None:
            try:
                local_key = load_local_public_key(settings.local_key_path)
            except LocalKeyError as error:
                raise VerifierConfigError(
                    f"{env_name(ReviewSettings, 'local_key_path')}: {error}"
                ) from None
        return cls(
            audience=settings.oidc_audience,
            role_claim=settings.oidc_role_claim,
            issuer=settings.oidc_issuer,
            jwks_url=settings.oidc_jwks_url,
            local_key=local_key,
            **tuning,
        )

    @property
    def accepted_issuers(self) -> list[str]:
        return [
            *([self.issuer] if self.issuer else []),
            *([LOCAL_ISSUER] if self.local_key is not None else []),
        ]

    async def __call__(self, authorization: str | None) -> Principal:
        """The caller an `Authorization` header value names: the API's authenticator."""
        return await self.verify(bearer_token(authorization))

    async def verify(self, token: str) -> Principal:
        """The principal a token names; Unauthenticated or KeysUnavailable otherwise. A token
        of the OIDC issuer is verified in a worker thread (its JWKS may need fetching)."""
        header, issuer = self._route(token)
        if issuer == LOCAL_ISSUER:
            return self._verify(token, header, issuer)
        return await asyncio.to_thread(self._verify, token, header, issuer)

    def verify_sync(self, token: str) -> Principal:
        """verify(), blocking: for scripts and tests, not for the event loop."""
        header, issuer = self._route(token)
        return self._verify(token, header, issuer)

    def _route(self, token: str) -> tuple[dict[str, Any], str]:
        """The token's header and the issuer (one of ours) whose keys must verify it."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated(f"the bearer token is longer than {MAX_TOKEN_LENGTH} characters")
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthenticated(
                "the bearer token is not a JWT (three base64url parts: header, claims, signature)"
            ) from None
        alg = header.get("alg")
        if alg not in ACCEPTED_ALGORITHMS:
            shown = alg if isinstance(alg, str) and alg.isalnum() and len(alg) <= 10 else "?"
            raise Unauthenticated(
                f"token algorithm {shown!r} is not accepted: only asymmetric signatures "
                f"({', '.join(ACCEPTED_ALGORITHMS)})"
            )
        issuer = claims.get("iss")
        if issuer is None:
            raise Unauthenticated("the token has no 'iss' (issuer) claim")
        if issuer not in self.accepted_issuers:
            raise Unauthenticated(
                "token issuer not accepted: this API accepts tokens whose 'iss' is "
                + " or ".join(self.accepted_issuers)
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("the token header has no 'kid' (key id)")
        return header, issuer

    def _key(self, header: Mapping[str, Any], issuer: str) -> tuple[Any, list[str]]:
        kid = header["kid"]
        if issuer == LOCAL_ISSUER:
            if kid != self._local_kid:
                raise Unauthenticated(
                    "unknown key id: not the local stack's current signing key "
                    "(was it recreated?): issue a new token with `concord token issue`"
                )
            return self.local_key, [LOCAL_ALGORITHM]
        if self._issuer_keys is None:  # _route accepts no other issuer: not reached
            raise Unauthenticated("token issuer not accepted")
        jwk = self._issuer_keys.signing_key(kid)
        if jwk.algorithm_name not in ACCEPTED_ALGORITHMS:
            raise Unauthenticated(
                "the issuer's key for this 'kid' is not an asymmetric signing key: refused"
            )
        # The PyJWK fixes the algorithm: a token claiming another one is refused by PyJWT.
        return jwk, [jwk.algorithm_name]

    def _verify(self, token: str, header: Mapping[str, Any], issuer: str) -> Principal:
        key, algorithms = self._key(header, issuer)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=issuer,
                leeway=self.leeway_seconds,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.PyJWTError as error:
            raise _explain(error, self.audience) from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject.strip():
            raise Unauthenticated("the token's 'sub' (subject) claim is empty")
        return Principal(
            subject=subject,
            role=role_from_claims(claims, self.role_claim),
            issuer=issuer,
            display_name=_display_name(claims),
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        )


def _explain(error: jwt.PyJWTError, audience: str) -> Unauthenticated:
    """What to fix, for each way PyJWT refuses a token; never a claim's value."""
    message: str
    match error:
        case jwt.ExpiredSignatureError():
            message = "the token has expired: get a new one"
        case jwt.ImmatureSignatureError():
            message = (
                "the token is not valid yet ('nbf' or 'iat' in the future): "
                "check the clocks of the issuer and of this server"
            )
        case jwt.InvalidAudienceError():
            message = f"wrong audience: the token's 'aud' must include {audience!r}"
        case jwt.InvalidIssuerError():
            message = "the token's 'iss' (issuer) is not accepted here"
        case jwt.MissingRequiredClaimError():
            message = f"the token has no {error.claim!r} claim"
        case jwt.InvalidSignatureError():
            message = "the token's signature does not verify with the issuer's key"
        case jwt.InvalidAlgorithmError():
            message = "the token's algorithm does not match its signing key"
        case jwt.InvalidIssuedAtError():
            message = "the token's 'iat' (issued at) must be a number of seconds"
        case InvalidSubjectError():
            message = "the token's 'sub' (subject) must be a string"
        case _:
            message = "the token is malformed (a claim of the wrong type, or a bad signature)"
    return Unauthenticated(message)


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name; a dotted name the token lacks as such is a path into nested objects
    (Keycloak's `realm_access.roles`). Names with dots (URLs, as Auth0 uses) work as they are."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def role_from_claims(claims: Mapping[str, Any], role_claim: str) -> Role:
    """The one Concord role the role claim names (a string, or a list in which values that
    are no Concord role are ignored). Several Concord roles: refused as ambiguous."""
    value = _claim(claims, role_claim)
    if value is None:
        raise Unauthenticated(
            f"the token has no {role_claim!r} claim naming a Concord role (one of {_ROLES})"
        )
    if isinstance(value, str):
        names = [value]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        names = value
    else:
        raise Unauthenticated(f"the token's {role_claim!r} claim must be a string or a list")
    roles = [role for role in Role if role in names]
    if not roles:
        raise Unauthenticated(
            f"the token's {role_claim!r} claim names no Concord role (one of {_ROLES})"
        )
    if len(roles) > 1:
        raise Unauthenticated(
            f"the token's {role_claim!r} claim names several Concord roles "
            f"({', '.join(roles)}): a token must carry exactly one; ask for a token for "
            "the role you are acting in"
        )
    return roles[0]


def _display_name(claims: Mapping[str, Any]) -> str | None:
    for name in ("name", "preferred_username"):
        value = claims.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    return None
