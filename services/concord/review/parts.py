"""The use cases a request reaches through its app's state (create_app puts them there): the
API's and the web page's one way to find them."""

from __future__ import annotations

from fastapi import Request

from concord.review.handlers import AlertReview
from concord.review.identity import IdentityReview
from concord.review.text_reviews import TextReview


def alert_review(request: Request) -> AlertReview:
    review: AlertReview = request.app.state.alert_review
    return review


def identity_review(request: Request) -> IdentityReview:
    review: IdentityReview = request.app.state.identity_review
    return review


def text_review(request: Request) -> TextReview:
    review: TextReview = request.app.state.text_review
    return review
