"""Signing in to the web page with the hospital's identity provider: OpenID Connect's
authorization code flow with PKCE (RFC 7636, S256), for a public client (PKCE alone) or a
confidential one (its secret sent with HTTP Basic, `client_secret_basic`).

1. `start()`: a random state, nonce and PKCE verifier, kept in this process's memory under a
   random id (the browser's short-lived cookie), and the issuer's authorization URL to send
   the browser to (from `{issuer}/.well-known/openid-configuration`).
2. `finish(id, state, code)`: the pending sign-in is taken (once: a second callback finds
   nothing), its state compared in constant time, the code exchanged at the token endpoint
   with the verifier, and the ID token verified: signature by a key of the issuer's JWKS
   (asymmetric algorithms only, as the API's verifier), `iss`, `aud` (the client id; `azp`
   when there are several), `exp`, `iat` and the nonce. The access token it returns is for
   the API's own verifier to name the principal (its role claim and audience rules).

Failures raise SignInFailed: a status, a message for the page (what happened and what to do;
never a token, a code or a claim's value) and a detail for the service's log.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
import jwt

from concord.config import ReviewSettings, env_name
from concord.review.auth import (
    ACCEPTED_ALGORITHMS,
    LEEWAY_SECONDS,
    KeysUnavailable,
    Unauthenticated,
    VerifierConfigError,
    _check_url,
    _IssuerKeys,
)

log = logging.getLogger(__name__)

CALLBACK_PATH = "/ui/callback"
PENDING_SECONDS = 600.0  # how long the identity provider's page may take
MAX_PENDING = 10_000
DISCOVERY_CACHE_SECONDS = 3600.0
HTTP_TIMEOUT_SECONDS = 5.0
MAX_RESPONSE_BYTES = 1024 * 1024
ID_TOKEN_CLAIMS: tuple[str, ...] = ("exp", "iat", "iss", "aud", "sub", "nonce")
_ERROR_CODE = re.compile(r"[a-z_]{1,64}")
_TRY_AGAIN = "Sign in again."


class SignInFailed(Exception):
    """The sign-in cannot go on: `status` and `message` for the page, `detail` for the log."""

    def __init__(self, status: int, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail or message


def error_code(value: str | None) -> str | None:
    """An OAuth error code fit to show (RFC 6749's are lower-case words), else None."""
    return value if value is not None and _ERROR_CODE.fullmatch(value) else None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def code_challenge(verifier: str) -> str:
    """PKCE's S256 challenge of a verifier: base64url(SHA-256(verifier)), unpadded."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class Provider:
    """What the issuer's discovery document says the flow needs."""

    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str | None


@dataclass(frozen=True, slots=True)
class PendingSignIn:
    state: str
    nonce: str
    verifier: str
    started: float


class PendingSignIns:
    """Sign-ins sent to the identity provider and not back yet, by the id in the browser's
    cookie: each taken at most once, for `ttl` seconds, at most `capacity` (the oldest go)."""

    def __init__(
        self,
        *,
        ttl: float = PENDING_SECONDS,
        capacity: int = MAX_PENDING,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self.monotonic = monotonic
        self._by_id: OrderedDict[str, PendingSignIn] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self) -> tuple[str, PendingSignIn]:
        now = self.monotonic()
        while self._by_id and now - next(iter(self._by_id.values())).started >= self.ttl:
            self._by_id.popitem(last=False)
        while len(self._by_id) >= self.capacity:
            self._by_id.popitem(last=False)
        pending = PendingSignIn(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(64),  # 86 characters: RFC 7636 allows 43-128
            started=now,
        )
        pending_id = secrets.token_urlsafe(32)
        self._by_id[pending_id] = pending
        return pending_id, pending

    def take(self, pending_id: str | None) -> PendingSignIn | None:
        """The pending sign-in, removed; None if unknown or too old."""
        pending = self._by_id.pop(pending_id, None) if pending_id else None
        if pending is None or self.monotonic() - pending.started >= self.ttl:
            return None
        return pending


class OidcSignIn:
    """The web page's client of the issuer: `start()`, then `finish()` at the callback."""

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        redirect_uri: str,
        client_secret: str | None = None,
        scopes: str = "openid profile",
        jwks_url: str | None = None,
        timeout_seconds: float = HTTP_TIMEOUT_SECONDS,
        leeway_seconds: float = LEEWAY_SECONDS,
    ) -> None:
        _check_url(issuer, env_name(ReviewSettings, "oidc_issuer"))
        _check_url(redirect_uri, env_name(ReviewSettings, "review_public_url"))
        if jwks_url is not None:
            _check_url(jwks_url, env_name(ReviewSettings, "oidc_jwks_url"))
        self.issuer = issuer
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self._secret = client_secret
        self.scopes = scopes
        self.timeout_seconds = timeout_seconds
        self.leeway_seconds = leeway_seconds
        self.pending = PendingSignIns()
        self._jwks_url = jwks_url
        self._provider: Provider | None = None
        self._provider_at = float("-inf")
        self._keys: _IssuerKeys | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: ReviewSettings) -> OidcSignIn | None:
        """The client the settings describe; None without CONCORD_OIDC_CLIENT_ID."""
        if settings.oidc_client_id is None:
            return None
        if settings.oidc_issuer is None or settings.oidc_redirect_uri is None:
            # ReviewSettings refuses this; a settings object built otherwise may not.
            raise VerifierConfigError(
                f"{env_name(ReviewSettings, 'oidc_client_id')} needs "
                f"{env_name(ReviewSettings, 'oidc_issuer')} and "
                f"{env_name(ReviewSettings, 'review_public_url')}"
            )
        secret = settings.oidc_client_secret
        return cls(
            issuer=settings.oidc_issuer,
            client_id=settings.oidc_client_id,
            redirect_uri=settings.oidc_redirect_uri,
            client_secret=secret.get_secret_value() if secret is not None else None,
            scopes=settings.oidc_scopes,
            jwks_url=settings.oidc_jwks_url,
        )

    @property
    def label(self) -> str:
        """The issuer as the sign-in button names it: its host."""
        return urlsplit(self.issuer).netloc or self.issuer

    @property
    def secure(self) -> bool:
        """Whether browsers reach the service over https (its cookies are then Secure)."""
        return self.redirect_uri.startswith("https://")

    # --- the flow ---------------------------------------------------------------------------

    async def start(self) -> tuple[str, str]:
        """(the pending sign-in's id, for the cookie; the URL to send the browser to)."""
        provider = await self.provider()
        pending_id, pending = self.pending.add()
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": self.scopes,
                "state": pending.state,
                "nonce": pending.nonce,
                "code_challenge": code_challenge(pending.verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint = provider.authorization_endpoint
        return pending_id, f"{endpoint}{'&' if urlsplit(endpoint).query else '?'}{query}"

    async def finish(self, pending_id: str | None, state: str | None, code: str | None) -> str:
        """The access token of a sign-in the identity provider sent back, its ID token
        verified; SignInFailed otherwise. The pending sign-in is used up whatever happens."""
        pending = self.pending.take(pending_id)
        if pending is None:
            raise SignInFailed(
                400,
                "This sign-in was not started in this browser, was used already, or took "
                f"longer than {PENDING_SECONDS / 60:.0f} minutes. {_TRY_AGAIN}",
            )
        if not state or not secrets.compare_digest(state.encode(), pending.state.encode()):
            raise SignInFailed(
                400,
                "The identity provider's answer does not belong to the sign-in this browser "
                f"started (its state differs): nothing was signed in. {_TRY_AGAIN}",
            )
        if not code:
            raise SignInFailed(
                400, f"The identity provider sent no authorization code. {_TRY_AGAIN}"
            )
        provider = await self.provider()
        tokens = await self._exchange(provider, code, pending.verifier)
        await self._verify_id_token(tokens["id_token"], pending.nonce, provider)
        return tokens["access_token"]

    # --- discovery --------------------------------------------------------------------------

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    async def provider(self) -> Provider:
        """The issuer's endpoints, from its discovery document (cached for an hour)."""
        async with self._lock:
            if (
                self._provider is None
                or time.monotonic() - self._provider_at >= DISCOVERY_CACHE_SECONDS
            ):
                self._provider = await self._discover()
                self._provider_at = time.monotonic()
            return self._provider

    async def _discover(self) -> Provider:
        url = self.discovery_url
        unavailable = (
            "The identity provider cannot be reached right now: try again in a moment. If "
            "this goes on, tell the Concord administrators."
        )
        try:
            async with httpx.AsyncClient(timeout=self.timeout_seconds) as client:
                response = await client.get(url, headers={"Accept": "application/json"})
            document = response.raise_for_status().json()
        except (httpx.HTTPError, ValueError) as error:
            raise SignInFailed(
                502, unavailable, f"cannot read the issuer's discovery document {url}: {error}"
            ) from None
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            raise SignInFailed(
                502,
                unavailable,
                f"the discovery document {url} does not name the issuer {self.issuer}",
            )
        endpoints: dict[str, str] = {}
        for name in ("authorization_endpoint", "token_endpoint"):
            value = document.get(name)
            try:
                endpoints[name] = (
                    _check_url(value, f"{name} of {url}") if isinstance(value, str) else ""
                )
            except VerifierConfigError as error:
                raise SignInFailed(502, unavailable, str(error)) from None
            if not endpoints[name]:
                raise SignInFailed(502, unavailable, f"the discovery document {url} has no {name}")
        methods = document.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise SignInFailed(
                502,
                unavailable,
                f"the discovery document {url} does not offer PKCE with S256: enable it for "
                "the client at the identity provider",
            )
        jwks_uri = document.get("jwks_uri")
        return Provider(
            endpoints["authorization_endpoint"],
            endpoints["token_endpoint"],
            jwks_uri if isinstance(jwks_uri, str) else None,
        )

    # --- the token endpoint -----------------------------------------------------------------

    def _client_auth(self) -> tuple[dict[str, str], dict[str, str]]:
        """(headers, form fields) that authenticate the client at the token endpoint."""
        if self._secret is None:  # a public client: its id, and PKCE
            return {}, {"client_id": self.client_id}
        # RFC 6749 2.3.1: each part form-urlencoded before Basic's base64.
        pair = f"{quote(self.client_id, safe='')}:{quote(self._secret, safe='')}"
        basic = base64.b64encode(pair.encode()).decode("ascii")
        return {"Authorization": f"Basic {basic}"}, {}

    async def _exchange(self, provider: Provider, code: str, verifier: str) -> dict[str, str]:
        headers, fields = self._client_auth()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
            **fields,
        }
        url = provider.token_endpoint
        unreachable = (
            "The identity provider could not complete the sign-in right now: try again in a "
            "moment. If this goes on, tell the Concord administrators."
        )
        try:
            async with httpx.AsyncClient(timeout=self.timeout_seconds) as client:
                response = await client.post(
                    url, data=form, headers={"Accept": "application/json", **headers}
                )
        except httpx.HTTPError as error:
            raise SignInFailed(
                502, unreachable, f"the token endpoint {url} failed: {type(error).__name__}"
            ) from None
        body = _json_object(response)
        if response.status_code != 200:
            code_ = error_code(body.get("error") if isinstance(body.get("error"), str) else None)
            detail = f"the token endpoint {url} answered {response.status_code} ({code_ or '?'})"
            if code_ == "invalid_grant":
                raise SignInFailed(
                    400,
                    "The identity provider refused this sign-in's code: it was used already "
                    f"or has expired. {_TRY_AGAIN}",
                    detail,
                )
            if code_ in ("invalid_client", "unauthorized_client"):
                raise SignInFailed(
                    502,
                    "The identity provider refused the review service's client credentials: "
                    "tell the Concord administrators (CONCORD_OIDC_CLIENT_ID, "
                    "CONCORD_OIDC_CLIENT_SECRET).",
                    detail,
                )
            raise SignInFailed(502, unreachable, detail)
        tokens: dict[str, str] = {}
        for name in ("id_token", "access_token"):
            value = body.get(name)
            if not isinstance(value, str) or not value:
                raise SignInFailed(502, unreachable, f"the token endpoint {url} returned no {name}")
            tokens[name] = value
        token_type = body.get("token_type")
        if isinstance(token_type, str) and token_type.lower() != "bearer":
            raise SignInFailed(
                502, unreachable, f"the token endpoint {url} returned a {token_type[:20]!r} token"
            )
        return tokens

    # --- the ID token -----------------------------------------------------------------------

    def _issuer_keys(self, provider: Provider) -> _IssuerKeys:
        if self._keys is None:
            self._keys = _IssuerKeys(
                self.issuer,
                self._jwks_url or provider.jwks_uri,
                cache_seconds=300,
                cooldown_seconds=30,
                timeout_seconds=self.timeout_seconds,
            )
        return self._keys

    async def _verify_id_token(self, id_token: str, nonce: str, provider: Provider) -> None:
        refused = "The identity provider's ID token was refused ({why}): nothing was signed in. "
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            raise SignInFailed(401, refused.format(why="not a JWT") + _TRY_AGAIN) from None
        kid, alg = header.get("kid"), header.get("alg")
        if alg not in ACCEPTED_ALGORITHMS:
            raise SignInFailed(401, refused.format(why="not an asymmetric signature") + _TRY_AGAIN)
        if not isinstance(kid, str) or not kid:
            raise SignInFailed(401, refused.format(why="no key id") + _TRY_AGAIN)
        keys = self._issuer_keys(provider)
        try:
            jwk = await asyncio.to_thread(keys.signing_key, kid)
        except Unauthenticated as error:
            raise SignInFailed(401, refused.format(why=error.message) + _TRY_AGAIN) from None
        except KeysUnavailable as error:
            raise SignInFailed(
                503, f"{error.message[:1].upper()}{error.message[1:]}.", error.detail
            ) from None
        if jwk.algorithm_name not in ACCEPTED_ALGORITHMS:
            raise SignInFailed(401, refused.format(why="not an asymmetric key") + _TRY_AGAIN)
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                jwk,
                algorithms=[jwk.algorithm_name],
                audience=self.client_id,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": list(ID_TOKEN_CLAIMS)},
            )
        except jwt.PyJWTError as error:
            raise SignInFailed(401, refused.format(why=_why(error)) + _TRY_AGAIN) from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != self.client_id:
            raise SignInFailed(
                401, refused.format(why="issued to another client ('azp')") + _TRY_AGAIN
            )
        sent = claims["nonce"]
        if not isinstance(sent, str) or not secrets.compare_digest(sent.encode(), nonce.encode()):
            raise SignInFailed(
                401,
                refused.format(why="its nonce is not this sign-in's: a replayed token?")
                + _TRY_AGAIN,
            )


def _why(error: jwt.PyJWTError) -> str:
    match error:
        case jwt.ExpiredSignatureError():
            return "expired: check the clocks of the identity provider and of this server"
        case jwt.ImmatureSignatureError():
            return "not valid yet: check the clocks of the identity provider and of this server"
        case jwt.InvalidAudienceError():
            return "issued to another client ('aud')"
        case jwt.InvalidIssuerError():
            return "another issuer ('iss')"
        case jwt.MissingRequiredClaimError():
            return f"no {error.claim!r} claim"
        case jwt.InvalidSignatureError():
            return "its signature does not verify with the issuer's key"
        case _:
            return "malformed"


def _json_object(response: httpx.Response) -> Mapping[str, Any]:
    if len(response.content) > MAX_RESPONSE_BYTES:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
