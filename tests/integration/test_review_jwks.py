"""The review API's token verifier against a real (loopback) OpenID Connect issuer: discovery,
the JWKS over HTTP, key rotation; and `concord token issue` for the local stack."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa

from concord.cli import main
from concord.config import ENV_FILE, ReviewSettings
from concord.review.access import Role
from concord.review.auth import (
    LOCAL_ISSUER,
    KeysUnavailable,
    TokenVerifier,
    Unauthenticated,
)

pytestmark = pytest.mark.integration

AUDIENCE = "concord-review"


@dataclass
class Issuer:
    """What the loopback identity provider serves, and what it was asked for."""

    url: str = ""
    keys: list[dict[str, Any]] = field(default_factory=list)
    discovery_issuer: str | None = None  # None: its own url
    requests: list[str] = field(default_factory=list)
    down: bool = False  # answers 503 to everything

    def jwks_fetches(self) -> int:
        return sum(1 for path in self.requests if path.endswith("/certs"))


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    state = Issuer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            if state.down:
                self.send_error(503)
                return
            if self.path == "/realms/test/.well-known/openid-configuration":
                body: Any = {
                    "issuer": state.discovery_issuer or state.url,
                    "jwks_uri": f"{state.url}/certs",
                }
            elif self.path == "/realms/test/certs":
                body = {"keys": state.keys}
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/realms/test"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def token_for(issuer: Issuer, key: rsa.RSAPrivateKey, kid: str, role: str = "reviewer") -> str:
    now = int(time.time())
    claims = {
        "iss": issuer.url,
        "sub": "user-7",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "concord_roles": [role],
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def verifier_for(issuer: Issuer, *, cooldown: float) -> TokenVerifier:
    settings = ReviewSettings(
        database_url="postgresql://user@host:5432/concord",
        oidc_issuer=issuer.url,
    )
    return TokenVerifier.from_settings(settings, jwks_cooldown_seconds=cooldown)


def test_discovers_the_jwks_and_follows_a_key_rotation(issuer: Issuer) -> None:
    old_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer.keys = [public_jwk(old_key, "old")]
    verifier = verifier_for(issuer, cooldown=0)

    async def scenario() -> None:
        principal = await verifier.verify(token_for(issuer, old_key, "old"))
        assert (principal.subject, principal.role, principal.issuer) == (
            "user-7",
            Role.REVIEWER,
            issuer.url,
        )
        assert issuer.requests == [
            "/realms/test/.well-known/openid-configuration",
            "/realms/test/certs",
        ]
        await verifier.verify(token_for(issuer, old_key, "old"))
        assert issuer.jwks_fetches() == 1  # cached

        issuer.keys = [public_jwk(new_key, "new")]  # the issuer rotates "old" out
        # An unknown kid makes the verifier fetch the JWKS again: the new key is accepted...
        assert (await verifier.verify(token_for(issuer, new_key, "new"))).subject == "user-7"
        assert issuer.jwks_fetches() == 2
        # ... and tokens of the rotated-out key are refused.
        with pytest.raises(Unauthenticated, match="unknown key id"):
            await verifier.verify(token_for(issuer, old_key, "old"))

    asyncio.run(scenario())


def test_unknown_kids_do_not_hammer_the_issuer(issuer: Issuer) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer.keys = [public_jwk(key, "k1")]
    verifier = verifier_for(issuer, cooldown=30)
    verifier.verify_sync(token_for(issuer, key, "k1"))
    for n in range(5):
        with pytest.raises(Unauthenticated, match="unknown key id"):
            verifier.verify_sync(token_for(issuer, key, f"made-up-{n}"))
    assert issuer.jwks_fetches() == 1


def test_a_discovery_document_for_another_issuer_is_not_trusted(issuer: Issuer) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer.keys = [public_jwk(key, "k1")]
    issuer.discovery_issuer = "https://elsewhere.example"
    with pytest.raises(KeysUnavailable) as caught:
        verifier_for(issuer, cooldown=0).verify_sync(token_for(issuer, key, "k1"))
    assert "does not name the issuer" in caught.value.detail
    assert issuer.jwks_fetches() == 0


def test_an_unreachable_issuer_is_503(issuer: Issuer) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer.keys = [public_jwk(key, "k1")]
    verifier = verifier_for(issuer, cooldown=0)
    issuer.down = True
    with pytest.raises(KeysUnavailable) as caught:
        asyncio.run(verifier.verify(token_for(issuer, key, "k1")))
    assert caught.value.status_code == 503
    assert "503" in caught.value.detail
    issuer.down = False  # it recovers: the next request discovers it
    assert verifier.verify_sync(token_for(issuer, key, "k1")).subject == "user-7"


# --- concord token issue ----------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONCORD_LOCAL_KEY_PATH", "CONCORD_OIDC_AUDIENCE", "CONCORD_OIDC_ROLE_CLAIM"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_env")
def test_concord_token_issue_verifies_with_the_local_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = CliRunner().invoke(
        main,
        [
            "token",
            "issue",
            "--user",
            "alice",
            "--role",
            "clinician",
            "--ttl",
            "30m",
            "--state-dir",
            str(state),
        ],
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert "\n" not in token and token.count(".") == 2
    assert "alice (clinician), expires" in result.stderr
    assert "created the signing key" in result.stderr

    key_file = state / "review-signing-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    settings = ReviewSettings(
        database_url="postgresql://user@host:5432/concord",
        local_key_path=key_file,
    )
    principal = asyncio.run(TokenVerifier.from_settings(settings).verify(token))
    assert (principal.subject, principal.role, principal.issuer) == (
        "alice",
        Role.CLINICIAN,
        LOCAL_ISSUER,
    )
    assert principal.expires_at is not None

    # The second token reuses the key.
    again = CliRunner().invoke(
        main, ["token", "issue", "--user", "bob", "--role", "sre", "--state-dir", str(state)]
    )
    assert again.exit_code == 0 and "created" not in again.stderr
    assert TokenVerifier.from_settings(settings).verify_sync(again.stdout.strip()).role is Role.SRE


@pytest.mark.usefixtures("clean_env")
def test_concord_token_issue_reads_the_stacks_audience(tmp_path: Path) -> None:
    (tmp_path / ENV_FILE).write_text("CONCORD_OIDC_AUDIENCE=concord-review-test\n")
    result = CliRunner().invoke(
        main,
        ["token", "issue", "--user", "a", "--role", "admin", "--state-dir", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.stdout.strip(), options={"verify_signature": False})
    assert claims["aud"] == "concord-review-test"
    assert claims["concord_roles"] == "admin"


@pytest.mark.usefixtures("clean_env")
def test_concord_token_issue_refuses_unknown_roles(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["token", "issue", "--user", "a", "--role", "root", "--state-dir", str(tmp_path)],
    )
    assert result.exit_code == 2
    assert "'root' is not one of 'reviewer', 'clinician', 'auditor', 'sre', 'admin'" in (
        result.stderr
    )
    assert result.stdout == ""
    assert not (tmp_path / "review-signing-key.pem").exists()
