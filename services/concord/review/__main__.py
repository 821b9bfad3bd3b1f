"""`python -m concord.review`: the review service."""

from concord.review.service import main

main()
