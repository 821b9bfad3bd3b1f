"""The review service's HTTP API (FastAPI): thin. Each route authenticates the caller, applies
the rate limit, calls a use case (handlers.py) and maps its typed errors to 401/403/404/409/
422/429 with a message that says what to fix. The OpenAPI document it serves is kept in
docs/review-openapi.json (a test fails when they differ)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from concord.events.models import AlertKind, AlertStatus, AttributeClass, Severity
from concord.normalization.identity_reviews import (
    ReviewConflict,
    ReviewEntry,
    ReviewTask,
    UnknownReviewTask,
)
from concord.review.access import (
    PURPOSE_OF_USE_HEADER,
    PURPOSES_OF_USE,
    Principal,
    ReviewAccessError,
)
from concord.review.admin import (
    Administration,
    PrincipalRef,
    PrincipalRegistry,
    PrincipalView,
    Subscription,
    SubscriptionRequest,
)
from concord.review.alerts import (
    DISMISSAL_REASONS,
    MAX_PAGE,
    NO_CONTROL,
    AlertDetail,
    AlertFilter,
    AlertPage,
    AssignRequest,
    CommentRequest,
    DismissRequest,
    InvalidCursor,
    NotDecidable,
    ResolveRequest,
)
from concord.review.audit_store import PostgresAuditTrail
from concord.review.audit_view import (
    MAX_AUDIT_PAGE,
    AuditFilter,
    AuditPage,
    AuditVerdict,
    AuditView,
)
from concord.review.handlers import AlertReview, NotFound
from concord.review.identity import IdentityDecided, IdentityReview
from concord.review.ops import OpsSummary, OpsView
from concord.review.parts import alert_review, identity_review, text_review
from concord.review.text_reviews import (
    TextDecided,
    TextDecisionConflict,
    TextReview,
    TextReviewEntry,
    TextReviewTask,
)
from concord.review.web import router as web_router

API = "/api/v1"


class Authenticator(Protocol):
    async def __call__(self, authorization: str | None) -> Principal:
        """The verified caller; raises a ReviewAccessError (401) otherwise."""


class RateLimit(Protocol):
    def hit(self, principal: Principal) -> float | None:
        """Count a request; seconds to wait when the principal is over its limit."""


class TooManyRequests(ReviewAccessError):
    status_code = 429

    def __init__(self, wait: float) -> None:
        super().__init__(f"too many requests: try again in {max(1, round(wait))} s")
        self.wait = wait

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.wait)))}


class Problem(BaseModel):
    """Every error: what went wrong and what to do about it."""

    detail: str


class Done(BaseModel):
    """A change was made (or was already so: `changed` false)."""

    changed: bool


class Decided(BaseModel):
    resolution_id: str


class Catalogue(BaseModel):
    codes: dict[str, str]


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": why}
    for status, why in (
        (401, "No valid bearer token"),
        (403, "The caller's role may not do this"),
        (422, "A field is missing or wrong: named, its value never echoed"),
        (429, "Over the caller's rate limit"),
    )
}
MISSING: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "No such alert"}}
# A body FastAPI cannot decode (not UTF-8, not JSON) is refused before validation.
UNREADABLE: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body cannot be read as JSON"}
}
CONFLICTING: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "description": "The alert cannot take this now"}
}


async def caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    """The verified caller, not disabled by an administrator, counted against its rate
    limit."""
    principal: Principal = await request.app.state.authenticate(authorization)
    wait = request.app.state.rate_limit.hit(principal)
    if wait is not None:
        raise TooManyRequests(wait)
    await request.app.state.principals.admit(principal)
    return principal


Caller = Annotated[Principal, Depends(caller)]
Alerts = Annotated[AlertReview, Depends(alert_review)]
Identities = Annotated[IdentityReview, Depends(identity_review)]
# An alert's or a task's id, and a filter's text: no control characters (PostgreSQL's text
# cannot hold NUL, and no id has any).
ObjectId = Annotated[str, Path(min_length=1, max_length=200, pattern=NO_CONTROL)]
FilterText = Annotated[str, StringConstraints(max_length=200, pattern=NO_CONTROL)]
router = APIRouter(prefix=API)


@router.get("/alerts", response_model=AlertPage, tags=["alerts"])
async def list_alerts(
    principal: Caller,
    review: Alerts,
    status: Annotated[list[AlertStatus] | None, Query()] = None,
    kind: Annotated[list[AlertKind] | None, Query()] = None,
    attribute_class: Annotated[list[AttributeClass] | None, Query(alias="class")] = None,
    severity: Annotated[list[Severity] | None, Query()] = None,
    source: Annotated[list[FilterText] | None, Query(max_length=200)] = None,
    assignee: Annotated[FilterText | None, Query()] = None,
    min_age_hours: Annotated[float | None, Query(ge=0, le=24 * 366)] = None,
    max_age_hours: Annotated[float | None, Query(ge=0, le=24 * 366)] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> AlertPage:
    """Alerts, oldest first, with no PHI: enterprise ids, attributes, sources, states."""
    alert_filter = AlertFilter(
        status=tuple(status or ()),
        kind=tuple(kind or ()),
        attribute_class=tuple(attribute_class or ()),
        severity=tuple(severity or ()),
        source=tuple(source or ()),
        assignee=assignee,
        min_age=None if min_age_hours is None else timedelta(hours=min_age_hours),
        max_age=None if max_age_hours is None else timedelta(hours=max_age_hours),
    )
    return await review.page(principal, alert_filter, cursor=cursor, limit=limit)


@router.get(
    "/alerts/{alert_id}",
    response_model=AlertDetail,
    responses={**MISSING, 422: {"model": Problem, "description": "No purpose of use"}},
    tags=["alerts"],
)
async def alert_detail(
    principal: Caller,
    review: Alerts,
    alert_id: ObjectId,
    purpose: Annotated[str | None, Header(alias=PURPOSE_OF_USE_HEADER)] = None,
) -> AlertDetail:
    """The disagreeing values side by side with their provenance (PHI: audited, with the
    purpose of use)."""
    return await review.detail(principal, alert_id, purpose=purpose)


@router.post(
    "/alerts/{alert_id}/acknowledge",
    response_model=Done,
    responses={**MISSING, **CONFLICTING},
    tags=["alerts"],
)
async def acknowledge(principal: Caller, review: Alerts, alert_id: ObjectId) -> Done:
    return Done(changed=await review.acknowledge(principal, alert_id))


@router.post(
    "/alerts/{alert_id}/assign",
    response_model=Done,
    responses={**MISSING, **CONFLICTING, **UNREADABLE},
    tags=["alerts"],
)
async def assign(
    principal: Caller, review: Alerts, alert_id: ObjectId, request: AssignRequest
) -> Done:
    await review.assign(principal, alert_id, request)
    return Done(changed=True)


@router.post(
    "/alerts/{alert_id}/comments",
    response_model=Done,
    responses={**MISSING, **UNREADABLE},
    tags=["alerts"],
)
async def comment(
    principal: Caller, review: Alerts, alert_id: ObjectId, request: CommentRequest
) -> Done:
    await review.comment(principal, alert_id, request)
    return Done(changed=True)


@router.post(
    "/alerts/{alert_id}/resolve",
    response_model=Decided,
    responses={**MISSING, **CONFLICTING, **UNREADABLE},
    tags=["alerts"],
)
async def resolve(
    principal: Caller, review: Alerts, alert_id: ObjectId, request: ResolveRequest
) -> Decided:
    """Accept the proposal, choose a source's value, or enter a correction: published on
    concord.resolutions; the conflict closes and the decision stands."""
    return Decided(resolution_id=await review.decide(principal, alert_id, request))


@router.post(
    "/alerts/{alert_id}/dismiss",
    response_model=Decided,
    responses={**MISSING, **CONFLICTING, **UNREADABLE},
    tags=["alerts"],
)
async def dismiss(
    principal: Caller, review: Alerts, alert_id: ObjectId, request: DismissRequest
) -> Decided:
    return Decided(resolution_id=await review.decide(principal, alert_id, request))


@router.get("/catalogues/dismissal-reasons", response_model=Catalogue, tags=["catalogues"])
async def dismissal_reasons(_: Caller) -> Catalogue:
    return Catalogue(codes=dict(DISMISSAL_REASONS))


@router.get("/catalogues/purposes-of-use", response_model=Catalogue, tags=["catalogues"])
async def purposes(_: Caller) -> Catalogue:
    return Catalogue(codes={code: p.display for code, p in PURPOSES_OF_USE.items()})


@router.get("/identity/reviews", response_model=list[ReviewEntry], tags=["identity"])
async def list_identity_reviews(
    principal: Caller,
    review: Identities,
    include_decided: bool = False,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> list[ReviewEntry]:
    """Identity review tasks, oldest first: enterprise ids, the score and its breakdown
    (fields and levels, never values); open ones unless `include_decided`."""
    return await review.page(principal, include_decided=include_decided, limit=limit)


@router.get(
    "/identity/reviews/{task_id}",
    response_model=ReviewTask,
    responses={**MISSING, 422: {"model": Problem, "description": "No purpose of use"}},
    tags=["identity"],
)
async def identity_review_detail(
    principal: Caller,
    review: Identities,
    task_id: ObjectId,
    purpose: Annotated[str | None, Header(alias=PURPOSE_OF_USE_HEADER)] = None,
) -> ReviewTask:
    """Both records' demographics side by side and the score breakdown (PHI: audited)."""
    return await review.detail(principal, task_id, purpose=purpose)


@router.post(
    "/identity/reviews/{task_id}/link",
    response_model=IdentityDecided,
    responses={**MISSING, **CONFLICTING},
    tags=["identity"],
)
async def link_identity(
    principal: Caller, review: Identities, task_id: ObjectId
) -> IdentityDecided:
    """One patient: the record's patient is merged into the candidate; the facts follow.
    `concord identity unmerge` undoes it."""
    return await review.link(principal, task_id)


@router.post(
    "/identity/reviews/{task_id}/keep-apart",
    response_model=IdentityDecided,
    responses={**MISSING, **CONFLICTING},
    tags=["identity"],
)
async def keep_identities_apart(
    principal: Caller, review: Identities, task_id: ObjectId
) -> IdentityDecided:
    """Two people: matching never links them, nor asks about them again."""
    return await review.keep_apart(principal, task_id)


# --- text review tasks (issue 18) -------------------------------------------------------------


Texts = Annotated[TextReview, Depends(text_review)]
NO_TEXT_TASK: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such text review task"}
}
TEXT_DECIDED: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "description": "The task was decided the other way"}
}


@router.get("/text/reviews", response_model=list[TextReviewEntry], tags=["text"])
async def list_text_reviews(
    principal: Caller,
    texts: Texts,
    include_decided: bool = False,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> list[TextReviewEntry]:
    """Findings read from clinical text below the policy's confidence, oldest first:
    enterprise ids, the attribute, the confidence and the assertion (never the value or the
    words); open ones unless `include_decided`."""
    return await texts.page(principal, include_decided=include_decided, limit=limit)


@router.get(
    "/text/reviews/{task_id}",
    response_model=TextReviewTask,
    responses={**NO_TEXT_TASK, 422: {"model": Problem, "description": "No purpose of use"}},
    tags=["text"],
)
async def text_review_detail(
    principal: Caller,
    texts: Texts,
    task_id: ObjectId,
    purpose: Annotated[str | None, Header(alias=PURPOSE_OF_USE_HEADER)] = None,
) -> TextReviewTask:
    """The value read, the words that say it, their section and offsets, and the document's
    provenance (PHI: audited)."""
    return await texts.detail(principal, task_id, purpose=purpose)


@router.post(
    "/text/reviews/{task_id}/accept",
    response_model=TextDecided,
    responses={**NO_TEXT_TASK, **TEXT_DECIDED},
    tags=["text"],
)
async def accept_text_finding(principal: Caller, texts: Texts, task_id: ObjectId) -> TextDecided:
    """The finding becomes a fact (flagged ACCEPTED_BY_REVIEWER) and is compared like any."""
    return await texts.accept(principal, task_id)


@router.post(
    "/text/reviews/{task_id}/reject",
    response_model=TextDecided,
    responses={**NO_TEXT_TASK, **TEXT_DECIDED},
    tags=["text"],
)
async def reject_text_finding(principal: Caller, texts: Texts, task_id: ObjectId) -> TextDecided:
    """The text does not say it: nothing is published."""
    return await texts.reject(principal, task_id)


# --- the audit trail (auditors) -------------------------------------------------------------


def audit_view(request: Request) -> AuditView:
    view: AuditView = request.app.state.audit_view
    return view


Auditing = Annotated[AuditView, Depends(audit_view)]
# What the trail can hold: 1 to 256 characters, no control characters (a filter for anything
# else could match no row, and PostgreSQL refuses NUL in text).
AuditText = Annotated[
    str | None, Query(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")
]


@router.get("/audit", response_model=AuditPage, tags=["audit"])
async def list_audit(
    principal: Caller,
    view: Auditing,
    object_type: AuditText = None,
    object_id: AuditText = None,
    actor: AuditText = None,
    action: AuditText = None,
    before_seq: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_PAGE)] = 50,
) -> AuditPage:
    """The audit trail, newest first: who read or changed what, when, with which purpose (ids
    and codes, no PHI). Filters match exactly; `before_seq` (from `next_before_seq`) pages on.
    The read is audited itself (`audit.read`)."""
    audit_filter = AuditFilter(
        object_type=object_type, object_id=object_id, actor=actor, action=action
    )
    return await view.page(principal, audit_filter, before_seq=before_seq, limit=limit)


@router.get("/audit/verify", response_model=AuditVerdict, tags=["audit"])
async def verify_audit(principal: Caller, view: Auditing) -> AuditVerdict:
    """Check the whole chain (every row's hash, every link, no gap) and the anchors published
    of its head, as `concord audit verify` does: intact, or the first row where it breaks and
    what is wrong there. Without the broker, the anchors are not checked (`anchors_checked`
    false). One verification at a time; audited (`audit.read`)."""
    return await view.verify(principal)


# --- operations (sre, admin) -----------------------------------------------------------------


def ops_view(request: Request) -> OpsView:
    view: OpsView = request.app.state.ops_view
    return view


@router.get("/ops/summary", response_model=OpsSummary, tags=["ops"])
async def ops_summary(principal: Caller, view: Annotated[OpsView, Depends(ops_view)]) -> OpsSummary:
    """Counts only, no id of any kind: alerts waiting for a decision by kind, severity, status
    and age bucket; decisions of the last 24 h by kind; identity review tasks open."""
    return await view.summary(principal)


# --- administration (admin) ------------------------------------------------------------------


def administration(request: Request) -> Administration:
    admin: Administration = request.app.state.administration
    return admin


Admin = Annotated[Administration, Depends(administration)]
SubscriptionPath = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
ADMIN_MISSING: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such principal or subscription"}
}


@router.get("/admin/principals", response_model=list[PrincipalView], tags=["admin"])
async def list_principals(principal: Caller, admin: Admin) -> list[PrincipalView]:
    """The principals that have used the API (the identity provider owns the accounts)."""
    return await admin.principals(principal)


@router.post(
    "/admin/principals/disable",
    response_model=Done,
    responses={
        **ADMIN_MISSING,
        **UNREADABLE,
        409: {"model": Problem, "description": "An administrator's own account"},
    },
    tags=["admin"],
)
async def disable_principal(principal: Caller, admin: Admin, ref: PrincipalRef) -> Done:
    """Refuse a principal before its token expires (at once here, within seconds elsewhere)."""
    return Done(changed=await admin.set_disabled(principal, ref, disabled=True))


@router.post(
    "/admin/principals/enable",
    response_model=Done,
    responses={**ADMIN_MISSING, **UNREADABLE},
    tags=["admin"],
)
async def enable_principal(principal: Caller, admin: Admin, ref: PrincipalRef) -> Done:
    return Done(changed=await admin.set_disabled(principal, ref, disabled=False))


@router.get("/admin/subscriptions", response_model=list[Subscription], tags=["admin"])
async def list_subscriptions(principal: Caller, admin: Admin) -> list[Subscription]:
    return await admin.subscriptions(principal)


@router.put(
    "/admin/subscriptions/{name}",
    response_model=Subscription,
    responses=UNREADABLE,
    tags=["admin"],
)
async def put_subscription(
    principal: Caller, admin: Admin, name: SubscriptionPath, request: SubscriptionRequest
) -> Subscription:
    """Create or replace a named alert filter consumers follow (`concord alerts follow
    --subscription NAME`)."""
    return await admin.put_subscription(principal, name, request)


@router.delete(
    "/admin/subscriptions/{name}", response_model=Done, responses=ADMIN_MISSING, tags=["admin"]
)
async def delete_subscription(principal: Caller, admin: Admin, name: SubscriptionPath) -> Done:
    await admin.delete_subscription(principal, name)
    return Done(changed=True)


# --- errors ----------------------------------------------------------------------------------


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _access(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ReviewAccessError)  # noqa: S101 - registered for it only
    return _problem(error.status_code, error.message, error.headers)


# Typed errors of the use cases, by status; a subclass takes its base's.
STATUS_OF: tuple[tuple[type[Exception], int], ...] = (
    (NotFound, 404),
    (UnknownReviewTask, 404),
    (NotDecidable, 409),
    (ReviewConflict, 409),
    (TextDecisionConflict, 409),
    (InvalidCursor, 422),
)


async def _typed(_: Request, error: Exception) -> JSONResponse:
    status = next(code for kind, code in STATUS_OF if isinstance(error, kind))
    return _problem(status, str(error))


async def _invalid(_: Request, error: Exception) -> JSONResponse:
    """Name the fields and what is wrong; never echo the values sent (they may be PHI)."""
    assert isinstance(error, RequestValidationError)  # noqa: S101 - registered for it only
    problems = [
        f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
        for e in error.errors()
    ]
    return _problem(422, "; ".join(problems))


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    """Starlette's own errors (404 of an unknown path, 405), as every other: and a 405 names
    every method the path has, not only those of the first route that matched it."""
    assert isinstance(error, StarletteHTTPException)  # noqa: S101 - registered for it only
    headers = dict(error.headers or {})
    if error.status_code == 405:
        methods = {
            method
            for route in request.app.routes
            if isinstance(route, APIRoute) and route.path_regex.match(request.url.path)
            for method in route.methods or ()
        }
        headers["Allow"] = ", ".join(sorted(methods))
    return _problem(error.status_code, str(error.detail), headers)


def _bare_app() -> FastAPI:
    """The API without its parts: routes, error handlers, the OpenAPI document."""
    app = FastAPI(
        title="Concord review",
        version="1",
        description="Reviewers decide the disagreements Concord found. Every call needs a "
        "bearer token; a read of PHI needs a purpose of use (`X-Purpose-Of-Use`).",
        responses=ERRORS,
        # Swagger UI and ReDoc load scripts from a CDN: not on a service that serves PHI.
        docs_url=None,
        redoc_url=None,
    )
    app.add_exception_handler(ReviewAccessError, _access)
    for typed, _ in STATUS_OF:
        app.add_exception_handler(typed, _typed)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.include_router(router)
    app.include_router(web_router)  # the web page, /ui: not in the OpenAPI document

    @app.get("/health", include_in_schema=False)
    async def health() -> Response:
        return Response("ok", media_type="text/plain")

    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document the service serves at /openapi.json (docs/review-openapi.json)."""
    return _bare_app().openapi()


def create_app(
    review: AlertReview,
    identities: IdentityReview,
    authenticate: Authenticator,
    rate_limit: RateLimit,
    audit: AuditView | None = None,
    texts: TextReview | None = None,
) -> FastAPI:
    """`audit`: the auditor's views (default: over the alert review's pool, verifying without
    the anchors)."""
    app = _bare_app()
    app.state.alert_review = review
    app.state.identity_review = identities
    app.state.text_review = texts or TextReview(
        review.pool,
        PostgresAuditTrail(),
        review.store.outbox,
        published=review.published,
        clock=review.clock,
    )
    app.state.authenticate = authenticate
    app.state.rate_limit = rate_limit
    app.state.ops_view = OpsView(review.pool, clock=review.clock)
    app.state.audit_view = audit or AuditView(review.pool, PostgresAuditTrail())
    app.state.principals = PrincipalRegistry(review.pool)
    app.state.administration = Administration(
        review.pool, app.state.principals, review.audit, clock=review.clock
    )
    return app
