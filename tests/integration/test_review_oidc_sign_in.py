"""The web page's sign-in with the hospital's identity provider (OpenID Connect, authorization
code flow with PKCE), against a fake identity provider on a loopback port (discovery, JWKS, an
authorization endpoint the test drives, a token endpoint that checks the code, the PKCE
verifier, the client's authentication and the redirect URI) and the real PostgreSQL.

The browser is an httpx client on the ASGI app that keeps cookies; the identity provider's
page is another httpx client, over the network, whose redirect the test hands back to the
browser."""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import asyncpg
import httpx
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import rsa

from concord.config import ReviewSettings, load_settings
from concord.review.oidc import OidcSignIn, code_challenge
from concord.review.web import CONTENT_SECURITY_POLICY, OIDC_COOKIE, SESSION_COOKIE
from concord.stack.postgres import PostgresInfo
from review_tools import ReviewApp, review_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

CLIENT_ID = "concord-review-web"
CLIENT_SECRET = "s3cret:with/odd chars"
PUBLIC_URL = "http://127.0.0.1:8480"
REDIRECT_URI = f"{PUBLIC_URL}/ui/callback"
AUDIENCE = "concord-review"


# --- the fake identity provider -----------------------------------------------------------------


@dataclass
class Grant:
    """A code the authorization endpoint gave, and what it was given for."""

    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    user: str
    used: bool = False


@dataclass
class Exchange:
    """A request to the token endpoint, and the answer's status."""

    form: dict[str, str]
    authorization: str | None
    status: int = 0


@dataclass
class Idp:
    url: str = ""
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    client_secret: str | None = CLIENT_SECRET  # None: a public client
    grants: dict[str, Grant] = field(default_factory=dict)
    authorizations: list[dict[str, str]] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    users: dict[str, str] = field(default_factory=dict)  # user -> Concord role
    deny: bool = False  # the user refuses consent
    nonce: str | None = None  # an ID token with this nonce instead of the request's

    def token(self, claims: dict[str, Any]) -> str:
        now = int(time.time())
        claims = {"iss": self.url, "iat": now, "exp": now + 300, **claims}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})

    def access_token(self, user: str, role: str) -> str:
        return self.token(
            {"sub": user, "aud": AUDIENCE, "concord_roles": [role], "preferred_username": user}
        )

    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str]]:
        """The authorization endpoint: (status, the query it sends the browser back with)."""
        self.authorizations.append(query)
        if (
            query.get("response_type") != "code"
            or query.get("client_id") != CLIENT_ID
            or query.get("redirect_uri") != REDIRECT_URI
            or query.get("code_challenge_method") != "S256"
            or not re.fullmatch(r"[A-Za-z0-9_-]{43}", query.get("code_challenge", ""))
            or "openid" not in query.get("scope", "").split()
        ):
            return 400, {}
        if self.deny:
            return 302, {"error": "access_denied", "state": query["state"]}
        code = secrets.token_urlsafe(16)
        self.grants[code] = Grant(
            CLIENT_ID, query["redirect_uri"], query["code_challenge"], query["nonce"],
            user=next(iter(self.users)),
        )  # fmt: skip
        return 302, {"code": code, "state": query["state"]}

    def exchange(self, form: dict[str, str], authorization: str | None) -> tuple[int, Any]:
        """The token endpoint: (status, body)."""
        record = Exchange(form, authorization)
        self.exchanges.append(record)
        record.status, body = self._exchange(form, authorization)
        return record.status, body

    def _exchange(self, form: dict[str, str], authorization: str | None) -> tuple[int, Any]:
        if self.client_secret is not None:
            expected = base64.b64encode(b"concord-review-web:s3cret%3Awith%2Fodd%20chars").decode()
            if authorization != f"Basic {expected}":
                return 401, {"error": "invalid_client"}
        elif authorization is not None or form.get("client_id") != CLIENT_ID:
            return 401, {"error": "invalid_client"}
        grant = self.grants.get(form.get("code", ""))
        if form.get("grant_type") != "authorization_code" or grant is None or grant.used:
            return 400, {"error": "invalid_grant"}
        grant.used = True  # a code is good once
        if form.get("redirect_uri") != grant.redirect_uri:
            return 400, {"error": "invalid_grant"}
        if code_challenge(form.get("code_verifier", "")) != grant.challenge:
            return 400, {"error": "invalid_grant"}
        return 200, {
            "token_type": "Bearer",
            "expires_in": 300,
            "access_token": self.access_token(grant.user, self.users[grant.user]),
            "id_token": self.token(
                {
                    "sub": grant.user,
                    "aud": CLIENT_ID,
                    "azp": CLIENT_ID,
                    "nonce": self.nonce or grant.nonce,
                }
            ),
        }


@pytest.fixture
def idp() -> Iterator[Idp]:
    state = Idp()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any = None, location: str | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if path == "/realms/test/.well-known/openid-configuration":
                self._send(
                    200,
                    {
                        "issuer": state.url,
                        "authorization_endpoint": f"{state.url}/auth",
                        "token_endpoint": f"{state.url}/token",
                        "jwks_uri": f"{state.url}/certs",
                        "code_challenge_methods_supported": ["plain", "S256"],
                    },
                )
            elif path == "/realms/test/certs":
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(state.key.public_key()))
                self._send(200, {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]})
            elif path == "/realms/test/auth":
                args = {k: v[0] for k, v in parse_qs(query).items()}
                status, back = state.authorize(args)
                redirect = f"{args.get('redirect_uri')}?{urlencode(back)}" if back else None
                self._send(status, location=redirect)
            else:
                self._send(404)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if self.path != "/realms/test/token":
                self._send(404)
                return
            self._send(*state.exchange(form, self.headers.get("Authorization")))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/realms/test"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


# --- the app and a browser --------------------------------------------------------------------


@dataclass
class Web:
    review: ReviewApp
    idp: Idp

    def browser(self) -> httpx.AsyncClient:
        return self.review.browser(PUBLIC_URL)


def _settings(
    idp: Idp, postgres: PostgresInfo, monkeypatch: pytest.MonkeyPatch, *, secret: bool
) -> ReviewSettings:
    """The settings as the service reads them: from CONCORD_* variables."""
    for name in (
        "CONCORD_LOCAL_KEY_PATH", "CONCORD_OIDC_JWKS_URL", "CONCORD_OIDC_AUDIENCE",
        "CONCORD_OIDC_ROLE_CLAIM", "CONCORD_OIDC_SCOPES", "CONCORD_OIDC_CLIENT_SECRET",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONCORD_DATABASE_URL", postgres.dsn)
    monkeypatch.setenv("CONCORD_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("CONCORD_OIDC_ISSUER", idp.url)
    monkeypatch.setenv("CONCORD_OIDC_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("CONCORD_REVIEW_PUBLIC_URL", PUBLIC_URL + "/")
    if secret:
        monkeypatch.setenv("CONCORD_OIDC_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("CONCORD_RATE_LIMIT_PER_MINUTE", "1000")
    return load_settings(ReviewSettings)


@pytest_asyncio.fixture
async def web(
    idp: Idp, postgres: PostgresInfo, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Web]:
    yield Web(review_app(pool, _settings(idp, postgres, monkeypatch, secret=True), oidc=True), idp)


def _user(idp: Idp, role: str = "reviewer") -> str:
    user = f"user-{secrets.token_hex(4)}"
    idp.users = {user: role}
    return user


async def _to_the_idp(browser: httpx.AsyncClient) -> dict[str, str]:
    """The sign-in button, followed: the authorization request's query."""
    started = await browser.get("/ui/sign-in/oidc")
    assert started.status_code == 303, started.text
    location = urlsplit(started.headers["location"])
    assert location.path == "/realms/test/auth"
    return {k: v[0] for k, v in parse_qs(location.query).items()}


async def _idp_page(idp: Idp, query: dict[str, str]) -> httpx.Response:
    """The identity provider's page (over the network): its redirect back, not followed."""
    async with httpx.AsyncClient() as network:
        return await network.get(f"{idp.url}/auth", params=query)


async def _back(idp: Idp, query: dict[str, str]) -> str:
    """Where the identity provider sends the browser back: the callback's path and query."""
    answer = await _idp_page(idp, query)
    assert answer.status_code == 302
    back = urlsplit(answer.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == REDIRECT_URI
    return f"{back.path}?{back.query}"


def _refresh_target(html: str) -> str:
    found = re.search(r'<meta http-equiv="refresh" content="0; url=([^"]+)">', html)
    assert found, html
    return found.group(1)


def _set_cookie(response: httpx.Response, name: str) -> set[str]:
    [cookie] = [c for c in response.headers.get_list("set-cookie") if c.startswith(f"{name}=")]
    return {a.strip().lower() for a in cookie.split(";")[1:]}


# --- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("confidential", [True, False], ids=["confidential", "public"])
async def test_a_full_sign_in_lands_on_the_queue_with_a_session_cookie(
    idp: Idp,
    postgres: PostgresInfo,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    confidential: bool,
) -> None:
    idp.client_secret = CLIENT_SECRET if confidential else None
    settings = _settings(idp, postgres, monkeypatch, secret=confidential)
    web = Web(review_app(pool, settings, oidc=True), idp)
    user = _user(idp)
    async with web.browser() as browser:
        page = await browser.get("/ui/sign-in")
        assert page.status_code == 200
        host = urlsplit(idp.url).netloc
        assert f'<a class="button" href="/ui/sign-in/oidc">Sign in with {host}</a>' in page.text
        assert 'name="token"' not in page.text  # the paste form is behind a link
        assert 'href="/ui/sign-in?with=token"' in page.text
        assert 'name="token"' in (await browser.get("/ui/sign-in?with=token")).text

        query = await _to_the_idp(browser)
        started = web.review.responses[-1]
        assert {"httponly", "samesite=lax", "path=/ui", "max-age=600"} <= _set_cookie(
            started, OIDC_COOKIE
        )
        assert query["scope"] == "openid profile" and query["client_id"] == CLIENT_ID
        assert query["redirect_uri"] == REDIRECT_URI
        assert query["code_challenge_method"] == "S256"
        assert len({query["state"], query["nonce"], query["code_challenge"]}) == 3

        callback = await browser.get(await _back(idp, query))
        assert callback.status_code == 200, callback.text
        assert {"httponly", "samesite=strict", "path=/ui"} <= _set_cookie(callback, SESSION_COOKIE)
        assert OIDC_COOKIE not in browser.cookies  # used up
        assert f"Signed in as {user}, reviewer." in callback.text
        # The refresh (a navigation of our own page, which carries the Strict cookie).
        assert _refresh_target(callback.text) == "/ui"
        home = await browser.get("/ui")
        assert home.status_code == 303
        queue = await browser.get(home.headers["location"])
        assert queue.status_code == 200 and f"{user}, reviewer" in queue.text

    # What the token endpoint got: the verifier of the challenge, the client's authentication.
    [exchange] = idp.exchanges
    assert exchange.status == 200
    assert code_challenge(exchange.form["code_verifier"]) == query["code_challenge"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,128}", exchange.form["code_verifier"])
    assert exchange.form["redirect_uri"] == REDIRECT_URI
    if confidential:
        assert exchange.authorization is not None and "client_id" not in exchange.form
    else:
        assert exchange.authorization is None and exchange.form["client_id"] == CLIENT_ID
    # No code, state or token in any page, nor in any URL but the callback's own.
    for response in web.review.responses:
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert exchange.form["code"] not in response.text
        assert exchange.form["code_verifier"] not in response.text + str(response.headers)
        assert query["nonce"] not in response.text


async def test_a_wrong_state_is_refused_before_the_code_is_exchanged(web: Web) -> None:
    _user(web.idp)
    async with web.browser() as browser:
        query = await _to_the_idp(browser)
        back = await _back(web.idp, {**query})
        forged = back.replace(query["state"], "not-the-state")
        refused = await browser.get(forged)
        assert refused.status_code == 400
        assert "does not belong to the sign-in this browser started" in refused.text
        assert SESSION_COOKIE not in browser.cookies
        assert web.idp.exchanges == []
        # The pending sign-in is used up: the right state after it is refused too.
        again = await browser.get(back)
        assert again.status_code == 400 and "was not started in this browser" in again.text
    async with web.browser() as stranger:  # a callback without the browser's cookie
        assert (await stranger.get(back)).status_code == 400
    assert web.idp.exchanges == []


async def test_a_replayed_code_is_refused(web: Web) -> None:
    _user(web.idp)
    async with web.browser() as browser:
        back = await _back(web.idp, await _to_the_idp(browser))
        assert (await browser.get(back)).status_code == 200
        # The same callback again: its sign-in is used up.
        replay = await browser.get(back)
        assert replay.status_code == 400 and "was not started in this browser" in replay.text
        # The code with a new sign-in's state: the identity provider refuses the second exchange.
        fresh = await _to_the_idp(browser)
        code = parse_qs(urlsplit(back).query)["code"][0]
        reused = await browser.get(
            "/ui/callback?" + urlencode({"code": code, "state": fresh["state"]})
        )
        assert reused.status_code == 400
        assert "refused this sign-in&#39;s code: it was used already or has expired" in (
            reused.text
        )
        assert code not in reused.text
    assert [e.status for e in web.idp.exchanges] == [200, 400]


async def test_an_id_token_with_another_nonce_is_refused(web: Web) -> None:
    _user(web.idp)
    web.idp.nonce = "a-nonce-of-another-sign-in"
    async with web.browser() as browser:
        refused = await browser.get(await _back(web.idp, await _to_the_idp(browser)))
        assert refused.status_code == 401
        assert "its nonce is not this sign-in&#39;s" in refused.text
        assert SESSION_COOKIE not in browser.cookies
        assert (await browser.get("/ui/alerts")).headers["location"] == "/ui/sign-in"
    assert [e.status for e in web.idp.exchanges] == [200]


async def test_a_denied_consent_shows_a_message(web: Web) -> None:
    _user(web.idp)
    web.idp.deny = True
    async with web.browser() as browser:
        back = await _back(web.idp, await _to_the_idp(browser))
        assert "error=access_denied" in back
        refused = await browser.get(back)
        assert refused.status_code == 401
        assert "the identity provider did not sign you in (access denied" in refused.text
        assert "Sign in with" in refused.text  # the sign-in page, to try again
        assert SESSION_COOKIE not in browser.cookies and OIDC_COOKIE not in browser.cookies
    assert web.idp.exchanges == []


async def test_a_disabled_principal_cannot_sign_in(web: Web) -> None:
    user = _user(web.idp)
    async with web.browser() as browser:
        first = await browser.get(await _back(web.idp, await _to_the_idp(browser)))
        assert first.status_code == 200  # known to Concord now
    admin = web.idp.access_token("admin-1", "admin")
    async with web.browser() as api:
        disabled = await api.post(
            "/api/v1/admin/principals/disable",
            json={"issuer": web.idp.url, "subject": user},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert disabled.status_code == 200 and disabled.json()["changed"] is True
    async with web.browser() as browser:
        refused = await browser.get(await _back(web.idp, await _to_the_idp(browser)))
        assert refused.status_code == 403 and "this account is disabled in Concord" in refused.text
        assert SESSION_COOKIE not in browser.cookies


async def test_an_access_token_without_a_concord_role_is_refused(web: Web) -> None:
    _user(web.idp, role="offline_access")
    async with web.browser() as browser:
        refused = await browser.get(await _back(web.idp, await _to_the_idp(browser)))
        assert refused.status_code == 401
        assert "access token was refused" in refused.text and "names no Concord role" in (
            refused.text
        )
        assert SESSION_COOKIE not in browser.cookies


async def test_without_a_client_id_the_page_takes_a_pasted_token(web: Web) -> None:
    web.review.app.state.oidc = None
    async with web.browser() as browser:
        page = await browser.get("/ui/sign-in")
        assert 'name="token"' in page.text and "Sign in with" not in page.text
        assert (await browser.get("/ui/sign-in/oidc")).status_code == 404
        assert (await browser.get("/ui/callback?code=x&state=y")).status_code == 404


async def test_the_settings_name_what_the_web_sign_in_lacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from concord.config import SettingsProblem

    monkeypatch.setenv("CONCORD_DATABASE_URL", "postgresql://user@host:5432/concord")
    monkeypatch.setenv("CONCORD_OIDC_ISSUER", "https://login.hospital.example/realms/clinical")
    monkeypatch.setenv("CONCORD_OIDC_CLIENT_ID", CLIENT_ID)
    for name in ("CONCORD_REVIEW_PUBLIC_URL", "CONCORD_OIDC_CLIENT_SECRET", "CONCORD_OIDC_SCOPES"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SettingsProblem) as missing:
        load_settings(ReviewSettings)
    [line] = missing.value.lines
    assert line.startswith("CONCORD_REVIEW_PUBLIC_URL: not set")
    monkeypatch.setenv("CONCORD_REVIEW_PUBLIC_URL", "http://review.hospital.example")
    with pytest.raises(SettingsProblem) as plain:
        load_settings(ReviewSettings)
    assert plain.value.lines[0].startswith("CONCORD_REVIEW_PUBLIC_URL='http://review.hospital")
    monkeypatch.setenv("CONCORD_REVIEW_PUBLIC_URL", "https://review.hospital.example/")
    monkeypatch.setenv("CONCORD_OIDC_SCOPES", "profile email")
    with pytest.raises(SettingsProblem, match="CONCORD_OIDC_SCOPES='profile email': must"):
        load_settings(ReviewSettings)
    monkeypatch.delenv("CONCORD_OIDC_SCOPES")
    settings = load_settings(ReviewSettings)
    assert settings.oidc_redirect_uri == "https://review.hospital.example/ui/callback"
    assert OidcSignIn.from_settings(settings) is not None
