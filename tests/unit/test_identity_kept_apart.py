"""Never-link pairs in the pure core: `resolve(..., kept_apart=...)` leaves the patients a
reviewer kept apart out of the candidates (the store passes them in as data)."""

from __future__ import annotations

from concord.normalization.identity import Demographics, InMemoryIdentityIndex, KnownPerson
from concord.normalization.identity.resolution import How, IdentityRequest, resolve

ROBERT = Demographics(
    source="hospital-a",
    family="Smith",
    given=("Robert",),
    birth_date="1970-03-14",
    sex="male",
    postal_code="02139",
    phone="617-555-0101",
    address_line="12 Main Street",
)


def _index(*people: tuple[str, Demographics]) -> InMemoryIdentityIndex:
    return InMemoryIdentityIndex(
        KnownPerson(enterprise_id=eid, demographics=(d,)) for eid, d in people
    )


def _request(authoritative: str | None = None) -> IdentityRequest:
    return IdentityRequest(
        source="clinic-b",
        local_ids=("Patient/7",),
        demographics=ROBERT.model_copy(update={"source": "clinic-b"}),
        authoritative_id=authoritative,
    )


def test_a_patient_kept_apart_is_no_candidate() -> None:
    index = _index(("E1", ROBERT))
    linked = resolve(_request(), crosswalk={}, index=index)
    assert (linked.how, linked.enterprise_id) == (How.MATCHED, "E1")

    apart = resolve(_request(), crosswalk={}, index=index, kept_apart={"E1"})
    assert apart.how == How.NEW and apart.enterprise_id == _request().own_id
    assert apart.match is not None and apart.match.enterprise_id is None
    assert apart.review_candidate is None


def test_the_next_best_candidate_is_decided_on_its_own() -> None:
    """Two equal candidates are a question for a reviewer; one of them kept apart, the other
    is a plain link (the ambiguity was the kept-apart patient's)."""
    index = _index(("E1", ROBERT), ("E2", ROBERT.model_copy(update={"source": "lab-c"})))
    assert resolve(_request(), crosswalk={}, index=index).how == How.REVIEW
    one = resolve(_request(), crosswalk={}, index=index, kept_apart=("E1",))
    assert (one.how, one.enterprise_id) == (How.MATCHED, "E2")


def test_an_mpi_id_does_not_absorb_a_patient_kept_apart() -> None:
    index = _index(("E1", ROBERT))
    absorbing = resolve(_request("MPI-9"), crosswalk={}, index=index)
    assert (absorbing.enterprise_id, absorbing.absorbed) == ("MPI-9", ("E1",))
    apart = resolve(_request("MPI-9"), crosswalk={}, index=index, kept_apart=("E1",))
    assert (apart.how, apart.enterprise_id, apart.absorbed) == (How.AUTHORITATIVE, "MPI-9", ())
