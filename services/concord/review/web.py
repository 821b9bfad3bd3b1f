"""The review service's web page (/ui): server-rendered HTML forms over the same use cases as
the API (AlertReview, IdentityReview on app.state), so permissions and the audit trail are the
API's. No SQL and no JavaScript here.

* Sign-in: with CONCORD_OIDC_CLIENT_ID, "Sign in with <issuer>": OpenID Connect's
  authorization code flow with PKCE (review/oidc.py), whose access token the API's own
  authenticator verifies; without it (the local stack), or behind a "paste a token" link, the
  user pastes a bearer token (`concord token issue`, or one from the identity provider's own
  tools), verified the same way. The page then keeps a session: an opaque random id in an
  HttpOnly, SameSite=Strict cookie (Path=/ui; Secure over https) mapped, in this process's
  memory, to the principal. It ends at the token's `exp`, after IDLE without a request, or at
  sign-out.
* CSRF: every form carries the session's synchronizer token, checked on every POST, and a
  POST whose `Origin` or `Sec-Fetch-Site` says it came from another site is refused.
* No PHI in URLs: they carry alert and task ids and list filters only. A detail (PHI) is the
  response of a POST that names the purpose of use; every action answers with a 303 to a page
  without PHI, and a message kept in the session.
* Every /ui response carries a strict Content-Security-Policy (no inline script or style),
  nosniff, no referrer, and Cache-Control: no-store (pages; the stylesheet: no-cache).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, get_args
from urllib.parse import urlencode, urlsplit

import jinja2
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.datastructures import FormData

from concord.events.models import AlertKind, AlertStatus, AttributeClass, Severity
from concord.failures import failure_site
from concord.normalization.identity.demographics import Identifier
from concord.normalization.identity_reviews import (
    ReviewConflict,
    ReviewView,
    UnknownReviewTask,
)
from concord.review.access import (
    PURPOSES_OF_USE,
    Forbidden,
    Permission,
    Principal,
    PurposeOfUseRequired,
    ReviewAccessError,
    allowed,
    purpose_of_use,
    require,
)
from concord.review.admin import Disabled
from concord.review.alerts import (
    DISMISSAL_REASONS,
    MAX_PAGE,
    AlertDetail,
    AlertFilter,
    AssignRequest,
    CommentRequest,
    DismissRequest,
    InvalidCursor,
    NotDecidable,
    ResolveRequest,
)
from concord.review.auth import KeysUnavailable, Unauthenticated
from concord.review.handlers import NotFound
from concord.review.identity import IdentityDecided
from concord.review.oidc import OidcSignIn, SignInFailed, error_code
from concord.review.parts import alert_review, identity_review, text_review
from concord.review.text_reviews import TextDecided, TextDecisionConflict

log = logging.getLogger(__name__)

UI = "/ui"
SESSION_COOKIE = "concord_session"
# Sign-in has no session yet: its form's CSRF token is doubled in a short-lived cookie.
SIGN_IN_COOKIE = "concord_sign_in"
SIGN_IN_PATH = f"{UI}/sign-in"
# The identity provider's sign-in: the pending sign-in's id, until the browser comes back. Lax:
# the identity provider's top-level redirect back is a cross-site navigation.
OIDC_COOKIE = "concord_oidc"
OIDC_START_PATH = f"{SIGN_IN_PATH}/oidc"
IDLE = timedelta(minutes=30)
MAX_SESSIONS = 10_000
PAGE_SIZE = 50
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# The queue's default: what still needs a decision.
OPEN_QUEUE = f"{UI}/alerts?status=OPEN&status=ACKNOWLEDGED"

_HERE = Path(__file__).parent
STATIC = _HERE / "static"
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _age(seconds: int) -> str:
    hours = seconds / 3600
    if hours < 1:
        return f"{seconds // 60} min"
    if hours < 48:
        return f"{math.floor(hours)} h"
    return f"{math.floor(hours / 24)} d"


_ENV.filters["when"] = _when
_ENV.filters["age"] = _age


# --- sessions ---------------------------------------------------------------------------------


@dataclass
class WebSession:
    """A signed-in browser: its principal, its CSRF token, messages for the next page (no
    PHI: ids and states only) and the purpose of use it last gave (preselected next time)."""

    principal: Principal
    csrf: str
    expires_at: datetime
    last_seen: datetime
    flashes: list[tuple[str, str]] = field(default_factory=list)
    purpose: str | None = None

    def flash(self, kind: str, message: str) -> None:
        self.flashes = [*self.flashes[-4:], (kind, message)]


class Sessions:
    """Sessions of this process, by opaque id: bounded (the least recently used goes first
    when full), each ending at its token's expiry or after `idle` without a request."""

    def __init__(
        self,
        *,
        idle: timedelta = IDLE,
        capacity: int = MAX_SESSIONS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.idle = idle
        self.capacity = capacity
        self.clock = clock
        self._by_id: OrderedDict[str, WebSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def open(self, principal: Principal) -> tuple[str, WebSession]:
        now = self.clock()
        for sid in [sid for sid, s in self._by_id.items() if not self._live(s, now)]:
            del self._by_id[sid]
        while len(self._by_id) >= self.capacity:
            self._by_id.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        expires = principal.expires_at or now + self.idle
        session = WebSession(principal, secrets.token_urlsafe(32), expires, now)
        self._by_id[sid] = session
        return sid, session

    def get(self, sid: str | None) -> WebSession | None:
        session = self._by_id.get(sid) if sid else None
        if session is None or sid is None:
            return None
        now = self.clock()
        if not self._live(session, now):
            del self._by_id[sid]
            return None
        session.last_seen = now
        self._by_id.move_to_end(sid)
        return session

    def close(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def _live(self, session: WebSession, now: datetime) -> bool:
        return now < session.expires_at and now - session.last_seen < self.idle


def sessions_of(request: Request) -> Sessions:
    """The app's session store (made on first use)."""
    found = getattr(request.app.state, "web_sessions", None)
    if not isinstance(found, Sessions):
        found = Sessions()
        request.app.state.web_sessions = found
    return found


# --- errors the route class turns into pages -----------------------------------------------


class _SignIn(Exception):
    """No live session: go to the sign-in page."""


class _Refused(Exception):
    """A page with a status and a message (CSRF refusals, the rate limit)."""

    def __init__(self, status: int, title: str, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.headers = headers


def _csrf_refused() -> _Refused:
    return _Refused(
        403,
        "Form refused",
        "This form was not sent from this page of your session (a missing or outdated "
        "security token, or another site's page): nothing was changed. Go back, reload the "
        "page and try again.",
    )


def _fields(error: ValidationError | RequestValidationError) -> str:
    """What is wrong, by field; never the value sent (it may be PHI)."""
    # A request's errors start with where the field was (query, path, ...): not a field.
    skip = 1 if isinstance(error, RequestValidationError) else 0
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'][skip:]) or 'form'}: {e['msg']}" for e in error.errors()
    )


def _error_page(request: Request, error: Exception) -> Response:
    session: WebSession | None = getattr(request.state, "web_session", None)
    match error:
        case _SignIn():
            return _see(SIGN_IN_PATH)
        case _Refused():
            return _page(
                request,
                "error.html",
                session,
                status=error.status,
                headers=error.headers,
                title=error.title,
                message=error.message,
            )
        case Forbidden():
            return _page(
                request,
                "error.html",
                session,
                status=403,
                title="Not allowed",
                message=error.message,
            )
        case NotFound() | UnknownReviewTask():
            return _page(
                request, "error.html", session, status=404, title="Not found", message=str(error)
            )
        case NotDecidable() | ReviewConflict():
            return _page(
                request,
                "error.html",
                session,
                status=409,
                title="Cannot do this now",
                message=str(error),
            )
        case RequestValidationError():
            return _page(
                request,
                "error.html",
                session,
                status=422,
                title="Check the request",
                message=_fields(error),
            )
        case InvalidCursor():
            return _page(
                request, "error.html", session, status=422, title="Check the request",
                message=str(error),
            )  # fmt: skip
        case ReviewAccessError():
            return _page(
                request,
                "error.html",
                session,
                status=error.status_code,
                headers=error.headers,
                title="Cannot do this now",
                message=error.message,
            )
    # Type and code line only: the exception's text may quote what the page was about (PHI).
    log.error("the review page failed: %s", failure_site(error))
    return _page(
        request,
        "error.html",
        session,
        status=500,
        title="Something went wrong",
        message="The review service could not show this page; the error is in its log.",
    )


class WebRoute(APIRoute):
    """A /ui route: its errors become HTML pages, and every response carries the security
    headers (and no-store, unless it set its own Cache-Control)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response = await handler(request)
            except Exception as error:  # each kind becomes its page (others: a 500 page)
                response = _error_page(request, error)
            for name, value in SECURITY_HEADERS.items():
                response.headers[name] = value
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return guarded


router = APIRouter(prefix=UI, route_class=WebRoute, include_in_schema=False)


# --- helpers ----------------------------------------------------------------------------------


def _see(url: str) -> RedirectResponse:
    """303: after a POST, the browser GETs a page without PHI."""
    return RedirectResponse(url, status_code=303)


def _page(
    request: Request,
    template: str,
    session: WebSession | None,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    principal = session.principal if session else None
    flashes = session.flashes if session else []
    if session:
        session.flashes = []
    html = _ENV.get_template(template).render(
        principal=principal,
        csrf=session.csrf if session else "",
        flashes=flashes,
        can=lambda permission: principal is not None and allowed(principal, permission),
        P=Permission,
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=dict(headers or {}))


async def signed_in(request: Request) -> WebSession:
    """The request's live session, counted against its principal's rate limit."""
    session = sessions_of(request).get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise _SignIn
    request.state.web_session = session
    # A principal an administrator disabled loses the session it has, at its next request.
    await request.app.state.principals.admit(session.principal)
    wait = request.app.state.rate_limit.hit(session.principal)
    if wait is not None:
        seconds = max(1, round(wait))
        raise _Refused(
            429,
            "Too many requests",
            f"Too many requests: try again in {seconds} s.",
            **{"Retry-After": str(seconds)},
        )
    return session


Session = Annotated[WebSession, Depends(signed_in)]


def _same_site(request: Request) -> bool:
    """Whether the browser says this request came from our own pages (when it says)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
            return False
    return True


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) and value.strip() else None


async def posted(request: Request, session: WebSession) -> FormData:
    """The form of a POST, once its CSRF token and origin are checked."""
    form = await request.form()
    sent = form.get("csrf")
    if (
        not isinstance(sent, str)
        or not secrets.compare_digest(sent.encode(), session.csrf.encode())
        or not _same_site(request)
    ):
        raise _csrf_refused()
    return form


def _alert_url(alert_id: str) -> str:
    return f"{UI}/alerts/{alert_id}"


def _task_url(task_id: str) -> str:
    return f"{UI}/identity/{task_id}"


# --- sign-in ----------------------------------------------------------------------------------


def _oidc(request: Request) -> OidcSignIn | None:
    """The identity provider's sign-in, when CONCORD_OIDC_CLIENT_ID configures one."""
    found = getattr(request.app.state, "oidc", None)
    return found if isinstance(found, OidcSignIn) else None


def _secure(request: Request) -> bool:
    """Whether cookies are Secure: the request came over https, or the browsers reach the
    service at an https:// CONCORD_REVIEW_PUBLIC_URL (a TLS proxy in front)."""
    oidc = _oidc(request)
    return request.url.scheme == "https" or (oidc is not None and oidc.secure)


def _sign_in_form(
    request: Request,
    *,
    status: int = 200,
    message: str | None = None,
    paste: bool = False,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """The sign-in page: the identity provider's button when configured (the token form behind
    a link, `paste`), else the token form."""
    oidc = _oidc(request)
    token = secrets.token_urlsafe(32)
    response = _page(
        request,
        "sign_in.html",
        None,
        status=status,
        headers=headers,
        sign_in_csrf=token,
        message=message,
        oidc_label=oidc.label if oidc else None,
        oidc_start=OIDC_START_PATH,
        paste=paste or oidc is None,
    )
    response.set_cookie(
        SIGN_IN_COOKIE,
        token,
        max_age=3600,
        path=SIGN_IN_PATH,
        secure=_secure(request),
        httponly=True,
        samesite="strict",
    )
    return response


def _open_session(request: Request, principal: Principal, response: Response) -> None:
    """A new session for `principal`, its cookie set on `response`: a new id at every sign-in
    (none fixed beforehand survives it); the old session ends."""
    sessions_of(request).close(request.cookies.get(SESSION_COOKIE))
    sid, _ = sessions_of(request).open(principal)
    response.set_cookie(
        SESSION_COOKIE,
        sid,
        path=UI,
        secure=_secure(request),
        httponly=True,
        samesite="strict",
    )


@router.get("/sign-in")
async def sign_in_page(
    request: Request, with_: Annotated[str | None, Query(alias="with", max_length=20)] = None
) -> Response:
    return _sign_in_form(request, paste=with_ == "token")


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    form = await request.form()
    sent, kept = form.get("csrf"), request.cookies.get(SIGN_IN_COOKIE)
    if (
        not isinstance(sent, str)
        or not kept
        or not secrets.compare_digest(sent.encode(), kept.encode())
        or not _same_site(request)
    ):
        raise _csrf_refused()
    token = _text(form, "token")

    def again(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
        return _sign_in_form(request, status=status, message=message, paste=True, headers=headers)

    try:
        principal: Principal = await request.app.state.authenticate(
            "Bearer " + token.strip() if token else None
        )
    except Unauthenticated as error:
        return again(401, f"Not signed in: {error.message}.")
    except KeysUnavailable as error:
        return again(503, error.message + ".", error.headers)
    try:
        await request.app.state.principals.admit(principal)
    except Disabled as error:
        return again(403, error.message + ".")
    response = _see(UI)
    _open_session(request, principal, response)
    response.delete_cookie(SIGN_IN_COOKIE, path=SIGN_IN_PATH)
    return response


@router.get("/sign-in/oidc")
async def sign_in_with_oidc(request: Request) -> Response:
    """To the identity provider, with a new pending sign-in (its id in a short-lived cookie)."""
    oidc = _oidc(request)
    if oidc is None:
        raise NotFound("no such page")
    try:
        pending_id, url = await oidc.start()
    except SignInFailed as failed:
        log.warning("web sign-in not started: %s", failed.detail)
        return _sign_in_form(request, status=failed.status, message=failed.message)
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(
        OIDC_COOKIE,
        pending_id,
        max_age=int(oidc.pending.ttl),
        path=UI,
        secure=_secure(request),
        httponly=True,
        samesite="lax",
    )
    return response


@router.get("/callback")
async def oidc_callback(request: Request) -> Response:
    """Where the identity provider sends the browser back: the code exchanged, the ID token
    and the access token verified, the principal admitted, and a session opened."""
    oidc = _oidc(request)
    if oidc is None:
        raise NotFound("no such page")
    response = await _oidc_callback(request, oidc)
    response.delete_cookie(OIDC_COOKIE, path=UI, httponly=True, samesite="lax")
    return response


async def _oidc_callback(request: Request, oidc: OidcSignIn) -> Response:
    params = request.query_params
    pending_id = request.cookies.get(OIDC_COOKIE)
    if "error" in params:
        oidc.pending.take(pending_id)  # used up
        code = error_code(params.get("error"))
        log.info("web sign-in: the identity provider answered %s", code or "an error")
        if code == "access_denied":
            return _sign_in_form(
                request,
                status=401,
                message="Not signed in: the identity provider did not sign you in (access "
                "denied, or consent refused). Sign in again, or ask for access to Concord.",
            )
        said = f" ({code})" if code else ""
        return _sign_in_form(
            request,
            status=400,
            message=f"Not signed in: the identity provider answered with an error{said}. "
            "Sign in again.",
        )
    try:
        access_token = await oidc.finish(pending_id, params.get("state"), params.get("code"))
    except SignInFailed as failed:
        log.warning("web sign-in refused: %s", failed.detail)
        return _sign_in_form(request, status=failed.status, message=failed.message)
    try:
        # The API's own verifier: the role comes from the same claim, with the same audience.
        principal: Principal = await request.app.state.authenticate("Bearer " + access_token)
        if principal.issuer != oidc.issuer:
            raise Unauthenticated("the access token is not the identity provider's")
    except Unauthenticated as error:
        return _sign_in_form(
            request,
            status=401,
            message=f"Not signed in: the identity provider's access token was refused: "
            f"{error.message}.",
        )
    except KeysUnavailable as error:
        return _sign_in_form(
            request, status=503, message=error.message + ".", headers=error.headers
        )
    try:
        await request.app.state.principals.admit(principal)
    except Disabled as error:
        return _sign_in_form(request, status=403, message=error.message + ".")
    # A page, not a redirect: the browser came here from the identity provider's site, and
    # browsers withhold SameSite=Strict cookies on a redirect that follows such a navigation.
    # Its refresh is a navigation of our own page: the session cookie goes with it (and it
    # replaces this URL, with its code, in the browser's history).
    response = _page(request, "signed_in.html", None, next_url=UI, who=principal)
    _open_session(request, principal, response)
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    sid = request.cookies.get(SESSION_COOKIE)
    session = sessions_of(request).get(sid)
    if session is not None:
        await posted(request, session)
        sessions_of(request).close(sid)
    response = _see(SIGN_IN_PATH)
    response.delete_cookie(SESSION_COOKIE, path=UI, httponly=True, samesite="strict")
    return response


@router.get("")
async def home(request: Request, session: Session) -> Response:
    if allowed(session.principal, Permission.ALERTS_LIST):
        return _see(OPEN_QUEUE)
    if allowed(session.principal, Permission.IDENTITY_LIST):
        return _see(f"{UI}/identity")
    return _page(request, "home.html", session)


_STYLESHEETS = frozenset({"review.css"})


@router.get("/static/{name}")
async def static(name: str) -> Response:
    path = STATIC / name
    if name not in _STYLESHEETS or not path.is_file():
        raise NotFound(f"no file {name}")
    return Response(path.read_bytes(), media_type="text/css", headers={"Cache-Control": "no-cache"})


# --- alerts -----------------------------------------------------------------------------------

FILTER_CHOICES: Mapping[str, tuple[str, ...]] = {
    "status": get_args(AlertStatus),
    "kind": get_args(AlertKind),
    "class": get_args(AttributeClass),
    "severity": get_args(Severity),
}


@router.get("/alerts")
async def queue(
    request: Request,
    session: Session,
    status: Annotated[list[AlertStatus] | None, Query()] = None,
    kind: Annotated[list[AlertKind] | None, Query()] = None,
    attribute_class: Annotated[list[AttributeClass] | None, Query(alias="class")] = None,
    severity: Annotated[list[Severity] | None, Query()] = None,
    source: Annotated[str | None, Query(max_length=200)] = None,
    min_age_hours: Annotated[float | None, Query(ge=0, le=24 * 366)] = None,
    max_age_hours: Annotated[float | None, Query(ge=0, le=24 * 366)] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = PAGE_SIZE,
) -> Response:
    """The alert queue, oldest first: ids, attributes, sources, states (no PHI)."""
    sources = tuple(s.strip() for s in (source or "").split(",") if s.strip())
    alert_filter = AlertFilter(
        status=tuple(status or ()),
        kind=tuple(kind or ()),
        attribute_class=tuple(attribute_class or ()),
        severity=tuple(severity or ()),
        source=sources,
        min_age=None if min_age_hours is None else timedelta(hours=min_age_hours),
        max_age=None if max_age_hours is None else timedelta(hours=max_age_hours),
    )
    page = await alert_review(request).page(
        session.principal, alert_filter, cursor=cursor, limit=limit
    )
    chosen: dict[str, list[str]] = {
        "status": list(status or ()),
        "kind": list(kind or ()),
        "class": list(attribute_class or ()),
        "severity": list(severity or ()),
    }
    query: list[tuple[str, str]] = [(name, v) for name, values in chosen.items() for v in values]
    if source:
        query.append(("source", source))
    for name, hours in (("min_age_hours", min_age_hours), ("max_age_hours", max_age_hours)):
        if hours is not None:
            query.append((name, f"{hours:g}"))
    if limit != PAGE_SIZE:
        query.append(("limit", str(limit)))
    next_href = (
        f"{UI}/alerts?{urlencode([*query, ('cursor', page.next_cursor)])}"
        if page.next_cursor
        else None
    )
    return _page(
        request,
        "alerts.html",
        session,
        page=page,
        choices=FILTER_CHOICES,
        chosen=chosen,
        source=source or "",
        min_age_hours="" if min_age_hours is None else f"{min_age_hours:g}",
        max_age_hours="" if max_age_hours is None else f"{max_age_hours:g}",
        next_href=next_href,
        first_href=f"{UI}/alerts?{urlencode(query)}" if cursor else None,
    )


def _purpose_page(
    request: Request,
    session: WebSession,
    *,
    what: str,
    heading: str,
    action: str,
    back: str,
    back_label: str,
) -> Response:
    """The form that asks why a PHI page is opened (its purpose of use) before it is read."""
    return _page(
        request,
        "purpose.html",
        session,
        what=what,
        heading=heading,
        action=action,
        back=back,
        back_label=back_label,
        purposes=PURPOSES_OF_USE,
        chosen_purpose=session.purpose,
    )


@router.get("/alerts/{alert_id}")
async def alert_purpose(request: Request, session: Session, alert_id: str) -> Response:
    """Why read it: the form whose POST shows the detail (no PHI on this page)."""
    require(session.principal, Permission.ALERTS_READ)
    return _purpose_page(
        request,
        session,
        what=f"alert {alert_id}",
        heading=f"Alert {alert_id}",
        action=f"{_alert_url(alert_id)}/read",
        back=OPEN_QUEUE,
        back_label="the alert queue",
    )


@router.post("/alerts/{alert_id}/read")
async def alert_detail(request: Request, session: Session, alert_id: str) -> Response:
    """The detail (PHI): the values side by side with provenance, the actions the role
    allows, the alert's history and audit trail. A POST's response: no URL to come back to."""
    form = await posted(request, session)
    review = alert_review(request)
    try:
        detail = await review.detail(session.principal, alert_id, purpose=_text(form, "purpose"))
    except PurposeOfUseRequired as error:
        session.flash("error", error.message)
        return _see(_alert_url(alert_id))
    session.purpose = purpose_of_use(_text(form, "purpose")).code
    trail = await review.audit_history(session.principal, alert_id)
    choices: dict[str, list[str]] = {}
    for v in detail.values:
        if v.value is not None:
            choices.setdefault(v.value, []).append(v.source_system)
    return _page(
        request,
        "alert.html",
        session,
        alert_id=alert_id,
        detail=detail,
        values=_value_rows(detail),
        provenance=_provenance_rows(detail),
        trail=trail,
        choices=choices,
        reasons=DISMISSAL_REASONS,
        decidable=detail.summary.status not in ("RESOLVED", "DISMISSED"),
    )


Rows = list[tuple[str, list[str]]]


def _value_rows(detail: AlertDetail) -> Rows:
    """The values side by side: a row per field, a column per source."""
    values = detail.values
    return [
        ("Value", [v.value if v.value is not None else "(none)" for v in values]),
        ("Display", [v.display or "" for v in values]),
        ("Unit", [v.unit or "" for v in values]),
        ("Fact status", [v.status for v in values]),
        ("Effective time", [_when(v.effective_time) for v in values]),
        ("Fact id", [v.fact_id for v in values]),
    ]


def _provenance_rows(detail: AlertDetail) -> Rows:
    """Where each value came from: the raw record on its topic, the source's own ids."""
    refs = [v.provenance for v in detail.values]
    return [
        ("Raw record", [f"{r.topic}, partition {r.partition}, offset {r.offset}" for r in refs]),
        ("Source record id", [r.source_record_id for r in refs]),
        ("Source record version", [r.source_record_version or "" for r in refs]),
        ("Received", [_when(r.received_time) for r in refs]),
        ("Event time", [
            _when(r.event_time) + (f" ({r.event_time_basis})" if r.event_time_basis else "")
            for r in refs
        ]),
        ("Payload SHA-256", [r.payload_sha256 for r in refs]),
    ]  # fmt: skip


def _demographic_rows(views: list[tuple[str, ReviewView]]) -> Rows:
    """Both records' demographics side by side: a row per field, a column per view."""
    shown = [(v, v.demographics) for _, v in views]
    return [
        ("Enterprise id", [v.enterprise_id for v, _ in shown]),
        ("Source", [v.source for v, _ in shown]),
        ("Local id", [v.view_id for v, _ in shown]),
        ("Family name", [d.family or "" for _, d in shown]),
        ("Given names", [" ".join(d.given) for _, d in shown]),
        ("Suffix", [d.suffix or "" for _, d in shown]),
        ("Birth date", [d.birth_date or "" for _, d in shown]),
        ("Sex", [str(d.sex or "") for _, d in shown]),
        ("Postal code", [d.postal_code or "" for _, d in shown]),
        ("Phone", [d.phone or "" for _, d in shown]),
        ("Address", [d.address_line or "" for _, d in shown]),
        ("Identifiers", ["; ".join(_identifier(i) for i in d.identifiers) for _, d in shown]),
        ("Updated", [_when(v.updated_at) for v, _ in shown]),
    ]  # fmt: skip


def _identifier(identifier: Identifier) -> str:
    kind = f"{identifier.type} " if identifier.type else ""
    return f"{kind}{identifier.system}|{identifier.value}"


def _fix(session: WebSession, back: str, message: str) -> RedirectResponse:
    session.flash("error", message)
    return _see(back)


@router.post("/alerts/{alert_id}/acknowledge")
async def acknowledge(request: Request, session: Session, alert_id: str) -> Response:
    await posted(request, session)
    back = _alert_url(alert_id)
    try:
        changed = await alert_review(request).acknowledge(session.principal, alert_id)
    except NotDecidable as error:
        return _fix(session, back, str(error))
    session.flash(
        "ok", f"Alert {alert_id} acknowledged." if changed else f"Alert {alert_id} was already."
    )
    return _see(back)


@router.post("/alerts/{alert_id}/assign")
async def assign(request: Request, session: Session, alert_id: str) -> Response:
    form = await posted(request, session)
    back = _alert_url(alert_id)
    try:
        assignment = AssignRequest(assignee=_text(form, "assignee") or "")
        await alert_review(request).assign(session.principal, alert_id, assignment)
    except ValidationError as error:
        return _fix(session, back, _fields(error))
    except NotDecidable as error:
        return _fix(session, back, str(error))
    session.flash("ok", f"Alert {alert_id} assigned to {assignment.assignee}.")
    return _see(back)


@router.post("/alerts/{alert_id}/comment")
async def comment(request: Request, session: Session, alert_id: str) -> Response:
    form = await posted(request, session)
    back = _alert_url(alert_id)
    try:
        await alert_review(request).comment(
            session.principal, alert_id, CommentRequest(body=_text(form, "body") or "")
        )
    except ValidationError as error:
        return _fix(session, back, _fields(error))
    session.flash("ok", f"Comment added to alert {alert_id}.")
    return _see(back)


@router.post("/alerts/{alert_id}/resolve")
async def resolve(request: Request, session: Session, alert_id: str) -> Response:
    form = await posted(request, session)
    return await _decide(
        request,
        session,
        alert_id,
        lambda: ResolveRequest.model_validate(
            {
                "decision": _text(form, "decision"),
                "value": form.get("value") if _text(form, "value") else None,
                "comment": _text(form, "comment"),
            }
        ),
    )


@router.post("/alerts/{alert_id}/dismiss")
async def dismiss(request: Request, session: Session, alert_id: str) -> Response:
    form = await posted(request, session)
    return await _decide(
        request,
        session,
        alert_id,
        lambda: DismissRequest.model_validate(
            {"reason": _text(form, "reason"), "comment": _text(form, "comment")}
        ),
    )


async def _decide(
    request: Request,
    session: WebSession,
    alert_id: str,
    decision: Callable[[], ResolveRequest | DismissRequest],
) -> Response:
    back = _alert_url(alert_id)
    try:
        resolution_id = await alert_review(request).decide(session.principal, alert_id, decision())
    except ValidationError as error:
        return _fix(session, back, _fields(error))
    except NotDecidable as error:
        return _fix(session, back, str(error))
    session.flash(
        "ok",
        f"Alert {alert_id}: decision {resolution_id} sent; the alert closes once the "
        "conflicts stage has applied it.",
    )
    return _see(OPEN_QUEUE)


# --- identity review tasks ------------------------------------------------------------------


@router.get("/identity")
async def identity_tasks(
    request: Request,
    session: Session,
    decided: Annotated[bool, Query()] = False,
) -> Response:
    """Identity review tasks, oldest first: ids and scores (no PHI)."""
    tasks = await identity_review(request).page(
        session.principal, include_decided=decided, limit=MAX_PAGE
    )
    return _page(request, "identity_tasks.html", session, tasks=tasks, decided=decided)


@router.get("/identity/{task_id}")
async def identity_purpose(request: Request, session: Session, task_id: str) -> Response:
    require(session.principal, Permission.IDENTITY_READ)
    return _purpose_page(
        request,
        session,
        what=f"identity review task {task_id}",
        heading=f"Identity review {task_id}",
        action=f"{_task_url(task_id)}/read",
        back=f"{UI}/identity",
        back_label="the identity reviews",
    )


@router.post("/identity/{task_id}/read")
async def identity_detail(request: Request, session: Session, task_id: str) -> Response:
    """Both records' demographics side by side and the score breakdown (PHI)."""
    form = await posted(request, session)
    try:
        task = await identity_review(request).detail(
            session.principal, task_id, purpose=_text(form, "purpose")
        )
    except PurposeOfUseRequired as error:
        return _fix(session, _task_url(task_id), error.message)
    session.purpose = purpose_of_use(_text(form, "purpose")).code
    views = [("The record matched", v) for v in task.record.views] + [
        ("The known patient", v) for v in task.candidate.views
    ]
    return _page(
        request,
        "identity_task.html",
        session,
        task=task,
        views=views,
        demographics=_demographic_rows(views),
    )


@router.post("/identity/{task_id}/link")
async def link(request: Request, session: Session, task_id: str) -> Response:
    await posted(request, session)
    try:
        done = await identity_review(request).link(session.principal, task_id)
    except ReviewConflict as error:
        return _fix(session, _task_url(task_id), str(error))
    return _identity_done(session, done)


@router.post("/identity/{task_id}/keep-apart")
async def keep_apart(request: Request, session: Session, task_id: str) -> Response:
    await posted(request, session)
    try:
        done = await identity_review(request).keep_apart(session.principal, task_id)
    except ReviewConflict as error:
        return _fix(session, _task_url(task_id), str(error))
    return _identity_done(session, done)


def _identity_done(session: WebSession, done: IdentityDecided) -> Response:
    said = "linked" if done.decision == "LINKED" else "kept apart"
    if not done.changed:
        message = f"Task {done.task_id} was already {said} by {done.decided_by}."
    elif done.decision == "LINKED":
        message = f"Task {done.task_id} linked: {done.absorbed} is now {done.survivor}."
    else:
        message = f"Task {done.task_id} kept apart: two people."
    session.flash("ok", message)
    return _see(f"{UI}/identity")


# --- text review tasks (issue 18) -----------------------------------------------------------


def _text_url(task_id: str) -> str:
    return f"{UI}/text/{task_id}"


@router.get("/text")
async def text_tasks(
    request: Request,
    session: Session,
    decided: Annotated[bool, Query()] = False,
) -> Response:
    """Findings read from text below the policy's confidence, oldest first (no PHI)."""
    tasks = await text_review(request).page(
        session.principal, include_decided=decided, limit=MAX_PAGE
    )
    return _page(request, "text_tasks.html", session, tasks=tasks, decided=decided)


@router.get("/text/{task_id}")
async def text_purpose(request: Request, session: Session, task_id: str) -> Response:
    require(session.principal, Permission.TEXT_READ)
    return _purpose_page(
        request,
        session,
        what=f"text review task {task_id}",
        heading=f"Text review {task_id}",
        action=f"{_text_url(task_id)}/read",
        back=f"{UI}/text",
        back_label="the text reviews",
    )


@router.post("/text/{task_id}/read")
async def text_detail(request: Request, session: Session, task_id: str) -> Response:
    """The value read, the words that say it and the document's provenance (PHI)."""
    form = await posted(request, session)
    try:
        task = await text_review(request).detail(
            session.principal, task_id, purpose=_text(form, "purpose")
        )
    except PurposeOfUseRequired as error:
        return _fix(session, _text_url(task_id), error.message)
    session.purpose = purpose_of_use(_text(form, "purpose")).code
    return _page(request, "text_task.html", session, task=task)


@router.post("/text/{task_id}/accept")
async def accept_text(request: Request, session: Session, task_id: str) -> Response:
    await posted(request, session)
    try:
        done = await text_review(request).accept(session.principal, task_id)
    except TextDecisionConflict as error:
        return _fix(session, _text_url(task_id), str(error))
    return _text_done(session, done)


@router.post("/text/{task_id}/reject")
async def reject_text(request: Request, session: Session, task_id: str) -> Response:
    await posted(request, session)
    try:
        done = await text_review(request).reject(session.principal, task_id)
    except TextDecisionConflict as error:
        return _fix(session, _text_url(task_id), str(error))
    return _text_done(session, done)


def _text_done(session: WebSession, done: TextDecided) -> Response:
    said = done.decision.lower()
    if not done.changed:
        message = f"Task {done.task_id} was already {said} by {done.decided_by}."
    elif done.decision == "ACCEPTED":
        message = f"Task {done.task_id} accepted: fact {done.fact_id} sent for comparison."
    else:
        message = f"Task {done.task_id} rejected: nothing was published."
    session.flash("ok", message)
    return _see(f"{UI}/text")


@router.get("/alerts/{alert_id}/{action}")
@router.get("/identity/{task_id}/{action}")
@router.get("/text/{task_id}/{action}")
async def not_a_page(request: Request, action: str) -> Response:
    """A detail's or an action's URL opened (a bookmark, a reload): its purpose form."""
    return _see(request.url.path.rsplit("/", 1)[0])


@router.api_route("/{rest:path}", methods=["GET", "POST"])
async def nowhere(request: Request, rest: str) -> Response:
    """Any other /ui path: the 404 page (with the headers), not the API's JSON."""
    if rest in ("", "/") and request.method == "GET":
        return _see(UI)
    raise NotFound("no such page")
