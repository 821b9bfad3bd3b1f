"""The review service's web page (/ui) against the real PostgreSQL, with tokens signed by a
local key and a browser played by an httpx client that keeps cookies: sign-in and its session
cookie, the queue and its filters without PHI in the page or in any URL, the detail behind a
purpose of use (a POST) with its audit history, every action from its form, CSRF, the security
headers on every response, what a clinician may not do, and identity reviews.

Each test plants its own alerts, from a source named after the test's token, and filters the
queue by that source."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import asyncpg
import httpx
import pytest
import pytest_asyncio

from concord.events import codec
from concord.events.models import Alert
from concord.normalization.identity_store import PostgresIdentityStore
from concord.review.access import Principal, Role
from concord.review.audit_store import PostgresAuditTrail
from concord.review.web import CONTENT_SECURITY_POLICY, SESSION_COOKIE, Sessions
from concord.stack.postgres import PostgresInfo
from concord.topics import RESOLUTIONS
from identity_tools import review_task_of
from review_tools import (
    ReviewApp,
    local_settings,
    plant_alerts,
    plant_text_task,
    review_alert,
    review_app,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]
NOW = datetime.now(UTC).replace(microsecond=0)


# --- the page, parsed ---------------------------------------------------------------------------


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)


class Page(HTMLParser):
    """What a test needs of a page: its URLs, its forms, and what the CSP would forbid."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.html = html
        self.urls: list[str] = []
        self.forms: list[Form] = []
        self.inline: list[str] = []  # <script>, <style>, style= and on*= attributes
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        for name in ("href", "src", "action", "formaction"):
            if name in found:
                self.urls.append(found[name])
        if tag in ("script", "style"):
            self.inline.append(tag)
        self.inline += [name for name in found if name == "style" or name.startswith("on")]
        if tag == "form":
            self.forms.append(Form(found.get("action", ""), found.get("method", "get").lower()))
        elif tag == "input" and self.forms and found.get("type") == "hidden":
            self.forms[-1].fields[found["name"]] = found.get("value", "")

    def actions(self) -> list[str]:
        return [f.action for f in self.forms if f.method == "post"]

    @property
    def csrf(self) -> str:
        [token] = {f.fields["csrf"] for f in self.forms if "csrf" in f.fields}
        return token


# --- the app and a browser --------------------------------------------------------------------


@pytest_asyncio.fixture
async def web(postgres: PostgresInfo, pool: asyncpg.Pool, tmp_path: Path) -> ReviewApp:
    return review_app(pool, local_settings(tmp_path, dsn=postgres.dsn))


async def sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    form = Page((await client.get("/ui/sign-in")).text).forms[0]
    return await client.post("/ui/sign-in", data={**form.fields, "token": token})


@asynccontextmanager
async def signed_in(
    web: ReviewApp, role: Role, user: str = "pat"
) -> AsyncIterator[httpx.AsyncClient]:
    async with web.browser() as client:
        signed = await sign_in(client, web.token(role, user))
        assert signed.status_code == 303, signed.text
        yield client


async def read(
    client: httpx.AsyncClient, path: str, purpose: str = "HOPERAT"
) -> tuple[httpx.Response, Page]:
    """A detail: its purpose form, then the form's POST."""
    form = Page((await client.get(path)).text).forms[-1]
    response = await client.post(form.action, data={**form.fields, "purpose": purpose})
    return response, Page(response.text)


# --- planted alerts ---------------------------------------------------------------------------


@dataclass
class Planted:
    token: str
    alerts: list[Alert]

    @property
    def source(self) -> str:
        return f"lab{self.token}"

    @property
    def phi(self) -> list[str]:
        """The planted names and source identifiers."""
        return [f"Zyx{self.token}", f"MRN-{self.token}"]

    def queue(self, **filters: str) -> str:
        return "/ui/alerts?" + httpx.QueryParams({"source": self.source, **filters}).__str__()


@pytest_asyncio.fixture
async def planted(pool: asyncpg.Pool) -> Planted:
    token = uuid.uuid4().hex[:8]
    alerts = [
        review_alert(token, n, severity="HIGH" if n % 2 else "LOW", source=f"lab{token}")
        for n in range(6)
    ]
    await plant_alerts(pool, alerts)
    return Planted(token, alerts)


def _listed(page: Page) -> list[str]:
    return [u.rsplit("/", 1)[1] for u in page.urls if re.fullmatch(r"/ui/alerts/[0-9a-f]{32}", u)]


async def _trail(pool: asyncpg.Pool, alert_id: str) -> list[str]:
    entries = await PostgresAuditTrail().find(pool, object_type="alert", object_id=alert_id)
    return [e.action for e in entries[::-1]]


async def test_sessions_end_at_the_tokens_expiry_after_idle_time_and_when_full() -> None:
    now = [NOW]
    sessions = Sessions(idle=timedelta(minutes=30), capacity=2, clock=lambda: now[0])

    def principal(user: str, ttl: timedelta) -> Principal:
        return Principal(user, Role.REVIEWER, "concord-local", expires_at=NOW + ttl)

    short, _ = sessions.open(principal("short", timedelta(minutes=20)))
    idle, _ = sessions.open(principal("idle", timedelta(hours=8)))
    now[0] += timedelta(minutes=19)
    assert sessions.get(short) is not None and sessions.get("made-up") is None
    now[0] += timedelta(minutes=2)
    assert sessions.get(short) is None  # the token expired
    now[0] += timedelta(minutes=29)
    assert sessions.get(idle) is None  # 50 minutes without a request
    first, one = sessions.open(principal("a", timedelta(hours=8)))
    second, _ = sessions.open(principal("b", timedelta(hours=8)))
    assert sessions.get(first) is one  # now the most recently used
    third, _ = sessions.open(principal("c", timedelta(hours=8)))
    assert len(sessions) == 2 and sessions.get(second) is None
    assert sessions.get(first) is one and sessions.get(third) is not None
    assert len({first, second, third}) == 3 and one.csrf not in {first, second, third}
    sessions.close(first)
    assert sessions.get(first) is None


# --- sign-in ----------------------------------------------------------------------------------


async def test_sign_in_sets_a_strict_http_only_cookie_and_sign_out_ends_the_session(
    web: ReviewApp,
) -> None:
    async with web.browser() as client:
        away = await client.get("/ui/alerts")
        assert away.status_code == 303 and away.headers["location"] == "/ui/sign-in"

        forged = await sign_in(client, "x.y.z")
        assert forged.status_code == 401
        assert "Not signed in: the bearer token is not a JWT" in forged.text
        expired = await sign_in(
            client,
            web.key.issue("pat", "reviewer", timedelta(seconds=1), now=NOW - timedelta(hours=1)),
        )
        assert expired.status_code == 401 and "has expired" in expired.text
        assert SESSION_COOKIE not in client.cookies
        # The sign-in form's own CSRF token: without it, nothing is verified.
        unbidden = await client.post("/ui/sign-in", data={"token": web.token(Role.REVIEWER)})
        assert unbidden.status_code == 403 and SESSION_COOKIE not in client.cookies

        signed = await sign_in(client, web.token(Role.REVIEWER, "rev-1"))
        assert signed.status_code == 303
        [cookie] = [
            c for c in signed.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE)
        ]
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/ui"} <= attributes
        assert "secure" not in attributes  # plain http here; https below
        sid = client.cookies[SESSION_COOKIE]
        queue = await client.get("/ui/alerts")
        assert queue.status_code == 200 and "rev-1, reviewer" in queue.text
        assert web.token(Role.REVIEWER, "rev-1")[:40] not in queue.text

        out = await client.post("/ui/sign-out", data={"csrf": Page(queue.text).csrf})
        assert out.status_code == 303 and out.headers["location"] == "/ui/sign-in"
        assert SESSION_COOKIE not in client.cookies
        assert (await client.get("/ui/alerts")).status_code == 303
    # The session is gone on the server too: its old cookie signs nobody in.
    async with web.browser() as replay:
        again = await replay.get("/ui/alerts", headers={"Cookie": f"{SESSION_COOKIE}={sid}"})
        assert again.status_code == 303 and again.headers["location"] == "/ui/sign-in"

    async with web.browser("https://review") as secure:
        signed = await sign_in(secure, web.token(Role.CLINICIAN))
        [cookie] = [
            c for c in signed.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE)
        ]
        assert "secure" in {a.strip().lower() for a in cookie.split(";")[1:]}

    async with web.browser() as sre:
        await sign_in(sre, web.token(Role.SRE))
        home = await sre.get("/ui")
        assert home.status_code == 200 and "has no pages here" in home.text
        refused = await sre.get("/ui/alerts")
        assert (
            refused.status_code == 403 and "lacks permission &#39;alerts.list&#39;" in refused.text
        )


# --- the queue ----------------------------------------------------------------------------------


async def test_the_queue_lists_planted_alerts_with_filters_and_no_phi_in_it_nor_in_any_url(
    web: ReviewApp, planted: Planted
) -> None:
    async with signed_in(web, Role.REVIEWER) as client:
        everything = await client.get(planted.queue())
        assert everything.status_code == 200
        page = Page(everything.text)
        assert set(_listed(page)) == {a.alert_id for a in planted.alerts}
        high = Page((await client.get(planted.queue(severity="HIGH"))).text)
        assert set(_listed(high)) == {a.alert_id for a in planted.alerts if a.severity == "HIGH"}
        old = Page((await client.get(planted.queue(min_age_hours="4.5"))).text)
        assert set(_listed(old)) == {a.alert_id for a in planted.alerts[4:]}
        closed = Page((await client.get(planted.queue(status="RESOLVED"))).text)
        assert _listed(closed) == []
        # Pages of two: the next-page links walk the whole list once.
        walked: list[str] = []
        path: str | None = planted.queue(limit="2")
        while path is not None:
            paged = Page((await client.get(path)).text)
            walked += _listed(paged)
            path = next((u for u in paged.urls if "cursor=" in u), None)
        assert sorted(walked) == sorted(a.alert_id for a in planted.alerts)
        bad = await client.get(planted.queue(severity="URGENT"))
        assert bad.status_code == 422 and "severity" in bad.text

        # The detail shows PHI in its body, never in a URL; no list shows any.
        alert = planted.alerts[1]
        purpose_form = await client.get(f"/ui/alerts/{alert.alert_id}")
        detail, detail_page = await read(client, f"/ui/alerts/{alert.alert_id}")
        assert alert.assertions[0].value in detail.text
        for response in (everything, purpose_form, detail):
            body_may_hold_phi = response is detail
            for phi in planted.phi:
                assert (phi in response.text) is body_may_hold_phi
                for url in Page(response.text).urls:
                    assert phi not in url and "Ana" not in url, url
        assert detail_page.actions()  # its forms' URLs were checked above
        for response in web.responses:
            assert not any(phi in str(response.url) for phi in planted.phi)
            assert not any(phi in response.headers.get("location", "") for phi in planted.phi)


# --- the detail -------------------------------------------------------------------------------


async def test_the_detail_needs_a_purpose_and_shows_values_provenance_and_the_read(
    web: ReviewApp, planted: Planted, pool: asyncpg.Pool
) -> None:
    alert = planted.alerts[2]
    path = f"/ui/alerts/{alert.alert_id}"
    async with signed_in(web, Role.REVIEWER, "rev-1") as client:
        asked = await client.get(path)
        assert asked.status_code == 200 and 'name="purpose"' in asked.text
        assert asked.headers["cache-control"] == "no-store"
        # No purpose, or a made-up one: back to the form, nothing read.
        csrf = Page(asked.text).csrf
        for purpose in ("", "HMARKT"):
            refused = await client.post(f"{path}/read", data={"csrf": csrf, "purpose": purpose})
            assert refused.status_code == 303 and refused.headers["location"] == path
            assert "purpose of use" in (await client.get(path)).text
        assert await _trail(pool, alert.alert_id) == []

        detail, _ = await read(client, path, "HOPERAT")
        assert detail.status_code == 200
        assert detail.headers["cache-control"] == "no-store"
        text = detail.text
        for source, value in [(a.source_system, a.value) for a in alert.assertions]:
            assert f'<th scope="col">{source}</th>' in text and f"<td>{value}</td>" in text
        assert f"MRN-{planted.token}-2" in text and "L-2" in text  # source record ids
        assert "ehr.raw.fhir, partition 0, offset 0" in text and "00" * 32 in text
        assert "hospital ranks highest" in text
        audit = text.split('id="audit-heading"')[1]
        assert re.search(r"<td>alert\.read</td><td>HOPERAT</td>", audit)
        assert "concord-local rev-1" in audit
        assert await _trail(pool, alert.alert_id) == ["alert.read"]
        # The purpose is remembered (a code, in the session) for the next read.
        again = await client.get(path)
        assert '<option value="HOPERAT" selected>' in again.text
        reload = await client.get(f"{path}/read")
        assert reload.status_code == 303 and reload.headers["location"] == path
        gone = await client.post("/ui/alerts/nope/read", data={"csrf": csrf, "purpose": "TREAT"})
        assert gone.status_code == 404 and "no alert nope" in gone.text
        nowhere = await client.get("/ui/no/such/page")
        assert nowhere.status_code == 404 and "<h1>Not found</h1>" in nowhere.text


# --- actions ------------------------------------------------------------------------------------


async def _form(client: httpx.AsyncClient, alert_id: str, action: str) -> Form:
    """The form of the detail page that posts to `action`."""
    _, page = await read(client, f"/ui/alerts/{alert_id}")
    [form] = [f for f in page.forms if f.action == f"/ui/alerts/{alert_id}/{action}"][:1]
    return form


async def test_each_action_works_from_its_form(
    web: ReviewApp, planted: Planted, pool: asyncpg.Pool
) -> None:
    ack, assigned, accepted, chosen, corrected, dismissed = planted.alerts
    async with signed_in(web, Role.REVIEWER, "rev-1") as client:
        form = await _form(client, ack.alert_id, "acknowledge")
        done = await client.post(form.action, data=form.fields)
        assert done.status_code == 303 and done.headers["location"] == f"/ui/alerts/{ack.alert_id}"
        assert (
            f"Alert {ack.alert_id} acknowledged."
            in (await client.get(done.headers["location"])).text
        )
        detail, page = await read(client, f"/ui/alerts/{ack.alert_id}")
        assert "by rev-1" in detail.text
        assert f"/ui/alerts/{ack.alert_id}/acknowledge" not in page.actions()

        form = await _form(client, assigned.alert_id, "assign")
        await client.post(form.action, data={**form.fields, "assignee": "rev-2"})
        form = await _form(client, assigned.alert_id, "comment")
        await client.post(form.action, data={**form.fields, "body": "checked with the lab"})
        detail, _ = await read(client, f"/ui/alerts/{assigned.alert_id}")
        assert "rev-2 (by rev-1" in detail.text and "<p>checked with the lab</p>" in detail.text
        empty = await client.post(form.action, data={**form.fields, "body": "  "})
        assert empty.status_code == 303
        assert (
            "body: String should have at least 1 character"
            in (await client.get(empty.headers["location"])).text
        )

        decisions = {
            accepted.alert_id: {"decision": "accept", "comment": "as proposed"},
            chosen.alert_id: {"decision": "choose", "value": chosen.assertions[1].value},
            corrected.alert_id: {"decision": "correct", "value": "Zyx^Corrected"},
        }
        for alert_id, fields in decisions.items():
            forms = [
                f
                for f in (await read(client, f"/ui/alerts/{alert_id}"))[1].forms
                if f.fields.get("decision") == fields["decision"]
            ]
            assert len(forms) == 1
            sent = await client.post(forms[0].action, data={**forms[0].fields, **fields})
            assert sent.status_code == 303 and sent.headers["location"].startswith("/ui/alerts?")
        # A choice that is no source's value is refused, and says why.
        form = await _form(client, dismissed.alert_id, "resolve")
        wrong = await client.post(
            form.action, data={**form.fields, "decision": "choose", "value": "Zyx^New"}
        )
        assert (
            wrong.status_code == 303
            and wrong.headers["location"] == f"/ui/alerts/{dismissed.alert_id}"
        )
        assert (
            "choose takes one of the sources&#39; values"
            in (await client.get(wrong.headers["location"])).text
        )
        form = await _form(client, dismissed.alert_id, "dismiss")
        other = await client.post(form.action, data={**form.fields, "reason": "OTHER"})
        assert "needs a comment" in (await client.get(other.headers["location"])).text
        await client.post(form.action, data={**form.fields, "reason": "SAME_MEANING"})
        # A second decision while the first is on its way: refused (409), back to the form.
        form = await _form(client, accepted.alert_id, "dismiss")
        racing = await client.post(form.action, data={**form.fields, "reason": "TEST_RECORD"})
        assert racing.headers["location"] == f"/ui/alerts/{accepted.alert_id}"
        assert "on its way" in (await client.get(racing.headers["location"])).text

    sent = [
        codec.CONFLICT_RESOLUTION.decode(v) for t, v, *_ in web.producer.sent if t == RESOLUTIONS
    ]
    assert {(r.conflict_id, r.decision, r.chosen_value, r.reason_code) for r in sent} == {
        (accepted.alert_id, "ACCEPTED_PROPOSAL", None, None),
        (chosen.alert_id, "CHOSE_VALUE", chosen.assertions[1].value, None),
        (corrected.alert_id, "CHOSE_VALUE", "Zyx^Corrected", None),
        (dismissed.alert_id, "DISMISSED", None, "SAME_MEANING"),
    }
    assert (await _trail(pool, ack.alert_id)).count("alert.acknowledge") == 1
    assert {"alert.assign", "alert.comment"} <= set(await _trail(pool, assigned.alert_id))


async def test_a_post_without_the_sessions_csrf_token_or_from_another_site_is_refused(
    web: ReviewApp, planted: Planted, pool: asyncpg.Pool
) -> None:
    alert = planted.alerts[0]
    async with signed_in(web, Role.REVIEWER) as client:
        form = await _form(client, alert.alert_id, "acknowledge")
        before = await _trail(pool, alert.alert_id)
        attempts = [
            ({}, {}),
            ({"csrf": "not-the-token"}, {}),
            ({"csrf": ""}, {}),
            (form.fields, {"Origin": "https://evil.example"}),
            (form.fields, {"Origin": "null"}),
            (form.fields, {"Sec-Fetch-Site": "cross-site"}),
        ]
        for fields, headers in attempts:
            refused = await client.post(form.action, data=fields, headers=headers)
            assert refused.status_code == 403, (fields, headers)
            assert "<h1>Form refused</h1>" in refused.text
        dismiss = await client.post(
            f"/ui/alerts/{alert.alert_id}/dismiss", data={"reason": "SAME_MEANING"}
        )
        assert dismiss.status_code == 403
        out = await client.post("/ui/sign-out", data={"csrf": "wrong"})
        assert out.status_code == 403 and (await client.get("/ui/alerts")).status_code == 200
        # Nothing changed: no row but the reads of the forms above, nothing published.
        assert await _trail(pool, alert.alert_id) == before
        assert web.producer.sent == []
        # The same form from our own page goes through.
        same = await client.post(
            form.action,
            data=form.fields,
            headers={"Origin": "http://review", "Sec-Fetch-Site": "same-origin"},
        )
        assert same.status_code == 303
        assert (await _trail(pool, alert.alert_id))[-1] == "alert.acknowledge"
    # Another browser's session has another token.
    async with signed_in(web, Role.REVIEWER, "rev-2") as other:
        assert (await other.post(form.action, data=form.fields)).status_code == 403


# --- headers ----------------------------------------------------------------------------------


async def test_every_ui_response_carries_the_csp_and_no_page_has_inline_script_or_style(
    web: ReviewApp, planted: Planted, pool: asyncpg.Pool
) -> None:
    run = uuid.uuid4().hex[:8]
    task_id, *_ = await review_task_of(PostgresIdentityStore(pool), run)
    alert = planted.alerts[0]
    async with web.browser() as client:
        await client.get("/ui/alerts")  # a redirect to sign in
        await sign_in(client, "x.y.z")  # refused
        await client.post("/ui/sign-in", data={"token": "x"})  # no CSRF token
        await sign_in(client, web.token(Role.REVIEWER))
        await client.get("/ui")
        await client.get(planted.queue())
        await read(client, f"/ui/alerts/{alert.alert_id}")
        await client.get(planted.queue(severity="URGENT"))  # 422
        await client.get("/ui/identity?decided=true")
        await read(client, f"/ui/identity/{task_id}", "PATADMIN")
        await client.get("/ui/static/review.css")
        await client.get("/ui/static/../api.py")
        await client.get("/ui/nothing-here")
        await client.post(f"/ui/alerts/{alert.alert_id}/acknowledge", data={})  # 403
    async with web.browser() as auditor:
        await sign_in(auditor, web.token(Role.AUDITOR))
        await auditor.get(f"/ui/alerts/{alert.alert_id}")  # 403
        # An auditor lists alerts but reads none: the queue does not link to what it may not.
        listed = await auditor.get(planted.queue())
        assert alert.alert_id in listed.text and _listed(Page(listed.text)) == []
    statuses = {r.status_code for r in web.responses}
    assert {200, 303, 401, 403, 404, 422} <= statuses
    for response in web.responses:
        where = f"{response.request.method} {response.url.path} {response.status_code}"
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, where
        assert response.headers["x-content-type-options"] == "nosniff", where
        assert response.headers["referrer-policy"] == "no-referrer", where
        if response.headers.get("content-type", "").startswith("text/html"):
            assert response.headers["cache-control"] == "no-store", where
            page = Page(response.text)
            assert page.inline == [], where
            assert "<script" not in response.text.lower() and "style=" not in response.text
            assert all(u.startswith(("/ui", "#")) for u in page.urls), (where, page.urls)
    css = [r for r in web.responses if r.url.path == "/ui/static/review.css"]
    assert css[0].status_code == 200 and css[0].headers["content-type"].startswith("text/css")
    assert "focus-visible" in css[0].text


# --- roles ------------------------------------------------------------------------------------


async def test_a_clinician_sees_no_action_and_a_post_by_one_is_refused(
    web: ReviewApp, planted: Planted, pool: asyncpg.Pool
) -> None:
    alert = planted.alerts[3]
    async with signed_in(web, Role.CLINICIAN, "doc-1") as client:
        detail, page = await read(client, f"/ui/alerts/{alert.alert_id}", "TREAT")
        assert detail.status_code == 200 and alert.assertions[1].value in detail.text
        assert page.actions() == ["/ui/sign-out"]
        assert "<button" in detail.text and "Acknowledge this alert" not in detail.text
        for action, fields in [
            ("acknowledge", {}),
            ("assign", {"assignee": "doc-1"}),
            ("comment", {"body": "hm"}),
            ("resolve", {"decision": "accept"}),
            ("dismiss", {"reason": "SAME_MEANING"}),
        ]:
            refused = await client.post(
                f"/ui/alerts/{alert.alert_id}/{action}", data={"csrf": page.csrf, **fields}
            )
            assert refused.status_code == 403, action
            assert (
                "role &#39;clinician&#39; lacks permission &#39;alerts.decide&#39;" in refused.text
            )
    assert await _trail(pool, alert.alert_id) == ["alert.read"]
    assert web.producer.sent == []


# --- identity review tasks ------------------------------------------------------------------


async def test_identity_tasks_are_listed_read_with_a_purpose_linked_and_kept_apart(
    web: ReviewApp, pool: asyncpg.Pool
) -> None:
    store = PostgresIdentityStore(pool)
    one, provisional, candidate, known, maybe = await review_task_of(store, uuid.uuid4().hex[:8])
    two, *_ = await review_task_of(store, uuid.uuid4().hex[:8])
    async with signed_in(web, Role.REVIEWER, "rev-9") as client:
        listed = await client.get("/ui/identity")
        page = Page(listed.text)
        assert {f"/ui/identity/{one}", f"/ui/identity/{two}"} <= set(page.urls)
        assert provisional in listed.text and candidate in listed.text
        for phi in (known.family.lower(), maybe.birth, known.birth):
            assert phi not in listed.text.lower()

        asked = await client.get(f"/ui/identity/{one}")
        assert known.family.lower() not in asked.text.lower()
        detail, page = await read(client, f"/ui/identity/{one}", "PATADMIN")
        assert detail.status_code == 200 and detail.headers["cache-control"] == "no-store"
        assert known.birth in detail.text and maybe.birth in detail.text  # side by side
        assert detail.text.count(known.family.lower()) >= 2
        assert "The record matched: b" in detail.text and "The known patient: a" in detail.text
        assert '<th scope="row">family</th>' in detail.text  # the score breakdown
        for url in page.urls:
            assert known.family.lower() not in url.lower() and maybe.birth not in url
        [link] = [f for f in page.forms if f.action == f"/ui/identity/{one}/link"]
        linked = await client.post(link.action, data=link.fields)
        assert linked.status_code == 303 and linked.headers["location"] == "/ui/identity"
        assert (
            f"Task {one} linked: {provisional} is now {candidate}."
            in (await client.get("/ui/identity")).text
        )
        # Keeping apart what was linked: refused (409), back to its purpose form with why.
        apart = await client.post(f"/ui/identity/{one}/keep-apart", data=link.fields)
        assert apart.headers["location"] == f"/ui/identity/{one}"
        assert (
            "was already decided: linked by rev-9" in (await client.get(f"/ui/identity/{one}")).text
        )

        _, page = await read(client, f"/ui/identity/{two}", "PATADMIN")
        [keep] = [f for f in page.forms if f.action.endswith("/keep-apart")]
        kept = await client.post(keep.action, data=keep.fields)
        assert kept.status_code == 303
        after = await client.get("/ui/identity")
        assert f"Task {two} kept apart: two people." in after.text
        assert f"/ui/identity/{two}" not in Page(after.text).urls  # decided: not open
        decided = Page((await client.get("/ui/identity?decided=true")).text)
        assert {f"/ui/identity/{one}", f"/ui/identity/{two}"} <= set(decided.urls)

    async with signed_in(web, Role.CLINICIAN) as doc:
        _, page = await read(doc, f"/ui/identity/{two}", "TREAT")
        assert page.actions() == ["/ui/sign-out"]
        refused = await doc.post(f"/ui/identity/{two}/link", data={"csrf": page.csrf})
        assert refused.status_code == 403 and "identity.decide" in refused.text

    trail = await PostgresAuditTrail().find(pool, object_type="identity_review", object_id=one)
    assert [(e.action, e.role, e.purpose) for e in trail[::-1]] == [
        ("identity.read", "reviewer", "PATADMIN"),
        ("identity.link", "reviewer", None),
    ]


async def test_text_tasks_are_listed_read_with_a_purpose_and_accepted(
    web: ReviewApp, pool: asyncpg.Pool
) -> None:
    task_id, patient = await plant_text_task(pool)
    async with signed_in(web, Role.REVIEWER, "rev-7") as client:
        listed = await client.get("/ui/text")
        assert f"/ui/text/{task_id}" in Page(listed.text).urls and patient in listed.text
        assert "osseous" not in listed.text  # the words are PHI: the detail only
        detail, page = await read(client, f"/ui/text/{task_id}", "TREAT")
        assert detail.status_code == 200 and detail.headers["cache-control"] == "no-store"
        assert "osseous metastatic disease" in detail.text and "possible" in detail.text
        [accept] = [f for f in page.forms if f.action == f"/ui/text/{task_id}/accept"]
        accepted = await client.post(accept.action, data=accept.fields)
        assert accepted.status_code == 303 and accepted.headers["location"] == "/ui/text"
        assert f"Task {task_id} accepted" in (await client.get("/ui/text")).text
    async with signed_in(web, Role.CLINICIAN) as doc:
        _, page = await read(doc, f"/ui/text/{task_id}", "TREAT")
        assert page.actions() == ["/ui/sign-out"]
        refused = await doc.post(f"/ui/text/{task_id}/reject", data={"csrf": page.csrf})
        assert refused.status_code == 403 and "text.decide" in refused.text
