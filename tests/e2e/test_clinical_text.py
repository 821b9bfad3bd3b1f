"""Issue 18 end to end: a clinician's note read by the narrative worker disagrees with a
pathology laboratory's coded result, and the alert shows the note's words beside the code."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import orjson
import pytest

from concord.stack.stack import StackInfo
from pipeline_tools import FIRST, LOINC, SNOMED_CT, eventually, fetch, patient, publish_keyed

pytestmark = [pytest.mark.e2e]

CLINIC, PATH_LAB = "e2e-oncology-clinic", "e2e-path-lab"
ER = "Oncology.biomarker/ER"
NOTE = (
    "Oncology Progress Note\n"
    "Family History:\nMother had ovarian cancer.\n"
    "Assessment and Plan:\n"
    "Stage IIB invasive ductal carcinoma of the left breast. ER negative; PR negative.\n"
    "Cannot rule out osseous metastatic disease; bone scan ordered.\n"
)


def _note(rid: str, subject: str) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": FIRST},
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": "11506-3"}]},
        "subject": {"reference": subject},
        "date": FIRST,
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(NOTE.encode()).decode(),
                }
            }
        ],
    }


def _er_result(rid: str, subject: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": FIRST},
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "16112-5"}]},
        "subject": {"reference": subject},
        "effectiveDateTime": FIRST,
        "valueCodeableConcept": {"coding": [{"system": SNOMED_CT, "code": "10828004"}]},
    }


@pytest.mark.asyncio
async def test_a_note_that_disagrees_with_a_coded_result_raises_an_alert_with_its_words(
    stack: StackInfo,
) -> None:
    token = uuid.uuid4().hex[:8]
    eid = f"EPT{token}"
    events: list[tuple[str, dict[str, Any]]] = []
    for source, tag in ((CLINIC, "c"), (PATH_LAB, "p")):
        rid = f"t{token}{tag}"
        events.append((source, orjson.loads(patient(eid, rid, last_updated=FIRST))))
    events.append((CLINIC, _note(f"t{token}note", f"Patient/t{token}c")))
    events.append((PATH_LAB, _er_result(f"t{token}er", f"Patient/t{token}p")))
    await publish_keyed(stack.bootstrap_servers, events)

    dsn = stack.database_url
    query = "SELECT attribute, status, assertions FROM alerts WHERE patient_id = $1"
    rows = await eventually(
        lambda: fetch(dsn, query, eid), lambda r: any(x["attribute"] == ER for x in r), within=60
    )
    [alert] = [r for r in rows if r["attribute"] == ER]
    assert alert["status"] == "OPEN"
    assertions = {a["source_system"]: a for a in orjson.loads(alert["assertions"])}
    assert (assertions[CLINIC]["value"], assertions[PATH_LAB]["value"]) == ("negative", "positive")
    evidence = assertions[CLINIC]["provenance"]["text"]
    assert evidence["kind"] == "note-text" and evidence["excerpt"].startswith("ER negative")
    assert NOTE[evidence["start"] : evidence["end"]] == evidence["excerpt"]
    assert assertions[PATH_LAB]["provenance"]["text"] is None
    # The possible bone metastasis waits for a reviewer; the mother's cancer is nowhere.
    tasks = await fetch(
        dsn, "SELECT attribute, assertion FROM text_review_tasks WHERE patient_id = $1", eid
    )
    assert {(t["attribute"], t["assertion"]) for t in tasks} >= {
        ("Oncology.metastaticSite/C79.5", "possible")
    }
    facts = await fetch(
        dsn,
        "SELECT attribute, value FROM fact_history WHERE patient_id = $1 AND source_system = $2",
        eid,
        CLINIC,
    )
    said = {(f["attribute"], f["value"]) for f in facts}
    assert ("Oncology.primarySite", "C50") in said and ("Oncology.stageGroup", "2") in said
    assert ("Oncology.primarySite", "C56") not in said
