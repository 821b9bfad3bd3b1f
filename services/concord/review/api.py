"""The review service's HTTP API (FastAPI): thin. Each route authenticates the caller, applies
the rate limit, calls a use case (handlers.py) and maps its typed errors to 401/403/404/409/
422/429 with a message that says what to fix. The OpenAPI document it serves is kept in
docs/review-openapi.json (a test fails when they differ)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

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
from concord.review.alerts import (
    DISMISSAL_REASONS,
    MAX_PAGE,
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
from concord.review.handlers import AlertReview, NotFound
from concord.review.identity import IdentityDecided, IdentityReview

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
        (429, "Over the caller's rate limit"),
    )
}
MISSING: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "No such alert"}}
CONFLICTING: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "description": "The alert cannot take this now"}
}


async def caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    """The verified caller, counted against its rate limit."""
    principal: Principal = await request.app.state.authenticate(authorization)
    wait = request.app.state.rate_limit.hit(principal)
    if wait is not None:
        raise TooManyRequests(wait)
    return principal


def alert_review(request: Request) -> AlertReview:
    review: AlertReview = request.app.state.alert_review
    return review


def identity_review(request: Request) -> IdentityReview:
    review: IdentityReview = request.app.state.identity_review
    return review


Caller = Annotated[Principal, Depends(caller)]
Alerts = Annotated[AlertReview, Depends(alert_review)]
Identities = Annotated[IdentityReview, Depends(identity_review)]
router = APIRouter(prefix=API)


@router.get("/alerts", response_model=AlertPage, tags=["alerts"])
async def list_alerts(
    principal: Caller,
    review: Alerts,
    status: Annotated[list[AlertStatus] | None, Query()] = None,
    kind: Annotated[list[AlertKind] | None, Query()] = None,
    attribute_class: Annotated[list[AttributeClass] | None, Query(alias="class")] = None,
    severity: Annotated[list[Severity] | None, Query()] = None,
    source: Annotated[list[str] | None, Query(max_length=200)] = None,
    assignee: Annotated[str | None, Query(max_length=200)] = None,
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
    alert_id: str,
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
async def acknowledge(principal: Caller, review: Alerts, alert_id: str) -> Done:
    return Done(changed=await review.acknowledge(principal, alert_id))


@router.post(
    "/alerts/{alert_id}/assign",
    response_model=Done,
    responses={**MISSING, **CONFLICTING},
    tags=["alerts"],
)
async def assign(principal: Caller, review: Alerts, alert_id: str, request: AssignRequest) -> Done:
    await review.assign(principal, alert_id, request)
    return Done(changed=True)


@router.post("/alerts/{alert_id}/comments", response_model=Done, responses=MISSING, tags=["alerts"])
async def comment(
    principal: Caller, review: Alerts, alert_id: str, request: CommentRequest
) -> Done:
    await review.comment(principal, alert_id, request)
    return Done(changed=True)


@router.post(
    "/alerts/{alert_id}/resolve",
    response_model=Decided,
    responses={**MISSING, **CONFLICTING},
    tags=["alerts"],
)
async def resolve(
    principal: Caller, review: Alerts, alert_id: str, request: ResolveRequest
) -> Decided:
    """Accept the proposal, choose a source's value, or enter a correction: published on
    concord.resolutions; the conflict closes and the decision stands."""
    return Decided(resolution_id=await review.decide(principal, alert_id, request))


@router.post(
    "/alerts/{alert_id}/dismiss",
    response_model=Decided,
    responses={**MISSING, **CONFLICTING},
    tags=["alerts"],
)
async def dismiss(
    principal: Caller, review: Alerts, alert_id: str, request: DismissRequest
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
    task_id: str,
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
async def link_identity(principal: Caller, review: Identities, task_id: str) -> IdentityDecided:
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
    principal: Caller, review: Identities, task_id: str
) -> IdentityDecided:
    """Two people: matching never links them, nor asks about them again."""
    return await review.keep_apart(principal, task_id)


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
    app.include_router(router)

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
) -> FastAPI:
    app = _bare_app()
    app.state.alert_review = review
    app.state.identity_review = identities
    app.state.authenticate = authenticate
    app.state.rate_limit = rate_limit
    return app
