"""Identity matching: cost per record as the known population grows, and accuracy.

    .venv/bin/python benchmarks/identity.py [--sizes 10000 100000] [--queries 2000] [--seed 7]
                                            [--store [--batch 500]]

For each size, a synthetic known population is put in an InMemoryIdentityIndex (one source
view per patient), then `match()` is timed on `--queries` records: half are another
source's view of a known patient with one or two registration errors (nickname, family name
typo, day/month swap, birth date typo, move, missing fields), half are new patients — of
which a third are relatives of known patients sharing their household (twins, parents and
children, spouses), the hard negatives. It prints µs per record, candidates compared per
record, the ratio of the largest size to the smallest, and the outcome of each query kind.

The population is random names from the fixed lists below, not `concord generate`: this
script depends on nothing but the identity core. Synthetic names are few and uniformly
drawn, so blocks are larger than with real name diversity at the same size: candidate
counts here are an upper bound for populations of these sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import string
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import date, timedelta

import asyncpg
from benchlib.runner import Teardown, database

from concord.normalization.identity import (
    Decision,
    Demographics,
    InMemoryIdentityIndex,
    KnownPerson,
    MatchDecision,
    Thresholds,
    match,
)
from concord.normalization.identity.blocking import blocking_keys
from concord.normalization.identity.resolution import IdentityRequest
from concord.normalization.identity.scoring import decide
from concord.normalization.identity_store import PostgresIdentityStore

FAMILY = """smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez
lopez gonzalez wilson anderson thomas taylor moore jackson martin lee perez thompson white
harris sanchez clark ramirez lewis robinson walker young allen king wright scott torres nguyen
hill flores green adams nelson baker hall rivera campbell mitchell carter roberts gomez
phillips evans turner diaz parker cruz edwards collins reyes stewart morris morales murphy cook
rogers gutierrez ortiz morgan cooper peterson bailey reed kelly howard ramos kim cox ward
richardson watson brooks chavez wood james bennett gray mendoza ruiz hughes price alvarez
castillo sanders patel myers long ross foster jimenez powell jenkins perry russell sullivan
bell coleman butler henderson barnes gonzales fisher vasquez simmons romero jordan patterson
alexander hamilton graham reynolds griffin wallace moreno west cole hayes bryant herrera gibson
ellis tran medina aguilar stevens murray ford castro marshall owens harrison fernandez
mcdonald woods washington kennedy wells vargas henry chen freeman webb tucker guzman burns
crawford olson simpson porter hunter gordon mendez silva shaw snyder mason dixon munoz hunt
hicks holmes palmer wagner black robertson boyd rose stone salazar fox warren mills meyer rice
schmidt garza daniels ferguson nichols stephens soto weaver ryan gardner payne grant dunn
kelley spencer hawkins arnold pierce vazquez hansen peters santos hart bradley knight elliott
cunningham duncan armstrong hudson carroll lane riley andrews alvarado ray delgado berry
perkins hoffman johnston matthews pena richards contreras willis carpenter lawrence
sandoval""".split()
MALE = """james robert john michael david william richard joseph thomas charles christopher
daniel matthew anthony mark donald steven paul andrew joshua kenneth kevin brian george
timothy ronald edward jason jeffrey ryan jacob gary nicholas eric jonathan stephen larry justin
scott brandon benjamin samuel gregory alexander frank patrick raymond jack dennis jerry tyler
aaron jose adam nathan henry douglas zachary peter kyle ethan walter noah jeremy christian
keith roger terry gerald harold sean austin carl arthur lawrence dylan jesse jordan bryan
billy joe bruce gabriel logan albert willie alan juan wayne elijah randy roy vincent ralph
eugene russell bobby mason philip louis""".split()
FEMALE = """mary patricia jennifer linda elizabeth barbara susan jessica sarah karen lisa nancy
betty margaret sandra ashley kimberly emily donna michelle carol amanda dorothy melissa
deborah stephanie rebecca sharon laura cynthia kathleen amy angela shirley anna brenda pamela
emma nicole helen samantha katherine christine debra rachel carolyn janet catherine maria
heather diane ruth julie olivia joyce virginia victoria kelly lauren christina joan evelyn
judith megan andrea cheryl hannah jacqueline martha gloria teresa ann sara madison frances
kathryn janice jean abigail alice judy sophia grace denise amber doris marilyn danielle
beverly isabella theresa diana natalie brittany charlotte marie kayla alexis lori""".split()
# What a registration desk writes for a formal name; independent of the matcher's list.
NICKNAMES = {
    "james": ["jim", "jimmy"],
    "robert": ["bob", "rob", "bobby"],
    "john": ["jack", "johnny"],
    "michael": ["mike"],
    "william": ["bill", "will", "billy"],
    "richard": ["rick", "dick"],
    "joseph": ["joe"],
    "thomas": ["tom", "tommy"],
    "charles": ["charlie", "chuck"],
    "christopher": ["chris"],
    "daniel": ["dan", "danny"],
    "matthew": ["matt"],
    "anthony": ["tony"],
    "steven": ["steve"],
    "andrew": ["andy", "drew"],
    "kenneth": ["ken", "kenny"],
    "edward": ["ed", "ted"],
    "nicholas": ["nick"],
    "benjamin": ["ben"],
    "samuel": ["sam"],
    "alexander": ["alex"],
    "patricia": ["pat", "patty", "trish"],
    "jennifer": ["jen", "jenny"],
    "elizabeth": ["liz", "beth", "betty"],
    "margaret": ["maggie", "peggy", "meg"],
    "susan": ["sue"],
    "deborah": ["debbie", "deb"],
    "katherine": ["kate", "kathy", "katie"],
    "rebecca": ["becky"],
    "kimberly": ["kim"],
    "christine": ["chris", "tina"],
    "victoria": ["vicky"],
    "samantha": ["sam"],
    "abigail": ["abby"],
}
SOURCE_KNOWN = "hospital-a"
SOURCE_QUERY = "clinic-b"


@dataclass(frozen=True)
class Person:
    family: str
    given: str
    middle: str
    sex: str
    birth: date
    postal: str
    street: str
    phone: str
    suffix: str = ""


def _birth(rng: random.Random, first: int = 1930, last: int = 2020) -> date:
    start = date(first, 1, 1)
    return start + timedelta(days=rng.randrange((date(last, 12, 31) - start).days))


def _address(rng: random.Random) -> tuple[str, str, str]:
    postal = f"{rng.randrange(1000, 1500):05d}"
    street = f"{rng.randrange(1, 9999)} {rng.choice(FAMILY).title()} {rng.choice(['St', 'Ave'])}"
    phone = f"{rng.choice([617, 781, 508, 978])}{rng.randrange(2_000_000, 9_999_999)}"
    return postal, street, phone


def random_person(rng: random.Random) -> Person:
    sex = rng.choice(["male", "female"])
    names = MALE if sex == "male" else FEMALE
    postal, street, phone = _address(rng)
    return Person(
        family=rng.choice(FAMILY),
        given=rng.choice(names),
        middle=rng.choice(string.ascii_lowercase),
        sex=sex,
        birth=_birth(rng),
        postal=postal,
        street=street,
        phone=phone,
    )


def relative(rng: random.Random, person: Person) -> Person:
    """Another person of the same household: the matcher's hardest non-matches."""
    kind = rng.choice(["twin", "child", "junior", "spouse"])
    sex = rng.choice(["male", "female"])
    names = MALE if sex == "male" else FEMALE
    given = rng.choice([n for n in names if n != person.given])
    if kind == "twin":
        return replace(person, given=given, sex=sex, suffix="")
    if kind == "junior" and person.sex == "male":
        born = person.birth + timedelta(days=365 * rng.randrange(20, 40) + rng.randrange(365))
        return replace(person, birth=born, suffix="jr")
    if kind == "spouse":
        return replace(person, given=given, sex=sex, birth=_birth(rng), family=rng.choice(FAMILY))
    born = person.birth + timedelta(days=365 * rng.randrange(18, 40) + rng.randrange(365))
    return replace(person, given=given, sex=sex, birth=born)


def _typo(rng: random.Random, text: str) -> str:
    i = rng.randrange(len(text) - 1)
    kind = rng.choice(["swap", "substitute", "drop"])
    if kind == "swap":
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    if kind == "substitute":
        return text[:i] + rng.choice(string.ascii_lowercase) + text[i + 1 :]
    return text[:i] + text[i + 1 :]


def _date_typo(rng: random.Random, born: date) -> date:
    for _ in range(20):
        digits = list(born.strftime("%Y%m%d"))
        i = rng.choice([3, 5, 7])  # last digit of year, month or day
        digits[i] = rng.choice([d for d in string.digits if d != digits[i]])
        try:
            return date(
                int("".join(digits[:4])), int("".join(digits[4:6])), int("".join(digits[6:]))
            )
        except ValueError:
            continue
    return born


ERRORS = ("nickname", "family_typo", "swap", "date_typo", "moved", "missing", "given_typo")


def with_errors(rng: random.Random, person: Person) -> tuple[Person, dict[str, bool]]:
    """Another source's view of the person, with one or two registration errors."""
    missing: dict[str, bool] = {}
    for error in rng.sample(ERRORS, rng.choice([1, 1, 2])):
        if error == "nickname" and person.given in NICKNAMES:
            person = replace(person, given=rng.choice(NICKNAMES[person.given]))
        elif error == "family_typo":
            person = replace(person, family=_typo(rng, person.family))
        elif error == "given_typo":
            person = replace(person, given=_typo(rng, person.given))
        elif error == "swap" and person.birth.day <= 12:
            person = replace(
                person, birth=date(person.birth.year, person.birth.day, person.birth.month)
            )
        elif error == "date_typo":
            person = replace(person, birth=_date_typo(rng, person.birth))
        elif error == "moved":
            postal, street, phone = _address(rng)
            person = replace(person, postal=postal, street=street, phone=phone)
        elif error == "missing":
            missing[rng.choice(["phone", "postal", "sex", "birth", "given"])] = True
    return person, missing


def demographics(
    person: Person, source: str, missing: dict[str, bool] | None = None
) -> Demographics:
    gone = missing or {}
    return Demographics(
        source=source,
        family=person.family,
        given=() if gone.get("given") else (person.given, person.middle),
        suffix=person.suffix or None,
        birth_date=None if gone.get("birth") else person.birth.isoformat(),
        sex=None if gone.get("sex") else person.sex,
        postal_code=None if gone.get("postal") else person.postal,
        phone=None if gone.get("phone") else person.phone,
        address_line=None if gone.get("postal") else person.street,
    )


def build(size: int, rng: random.Random) -> tuple[InMemoryIdentityIndex, list[Person]]:
    persons: list[Person] = []
    index = InMemoryIdentityIndex()
    for n in range(size):
        # About one in five known patients shares a household with an earlier one.
        person = relative(rng, rng.choice(persons)) if persons and rng.random() < 0.2 else None
        person = person or random_person(rng)
        persons.append(person)
        index.add(
            KnownPerson(
                enterprise_id=f"E{n:07d}", demographics=(demographics(person, SOURCE_KNOWN),)
            )
        )
    return index, persons


@dataclass
class Result:
    size: int
    build_seconds: float
    us_per_record: float
    candidates_per_record: float
    max_candidates: int
    # (query kind, true enterprise id or None, the decision) per query
    decisions: list[tuple[str, str | None, MatchDecision]]


def queries_for(
    rng: random.Random, persons: list[Person], count: int
) -> list[tuple[str, str | None, Demographics]]:
    work: list[tuple[str, str | None, Demographics]] = []
    for q in range(count):
        if q % 2 == 0:
            known = rng.randrange(len(persons))
            person, missing = with_errors(rng, persons[known])
            work.append(("duplicate", f"E{known:07d}", demographics(person, SOURCE_QUERY, missing)))
        elif q % 6 == 1:
            kin = relative(rng, rng.choice(persons))
            work.append(("relative", None, demographics(kin, SOURCE_QUERY)))
        else:
            work.append(("new", None, demographics(random_person(rng), SOURCE_QUERY)))
    return work


def run(size: int, queries: int, seed: int, thresholds: Thresholds) -> Result:
    rng = random.Random(seed)
    started = time.perf_counter()
    index, persons = build(size, rng)
    build_seconds = time.perf_counter() - started
    # The in-memory index is this script's stand-in for PostgreSQL: without freezing it,
    # Python's full collections walk its ~10^6 objects and double the time per record at
    # 10k, a cost of the stand-in, not of matching.
    gc.collect()
    gc.freeze()
    work = queries_for(rng, persons, queries)
    for _, _, record in work:
        _ = record.keys  # derived at extraction in the worker too: not the matcher's cost
    match(work[0][2], index, thresholds)  # warm-up: builds the nickname table once
    started = time.perf_counter()
    decisions = [match(record, index, thresholds) for _, _, record in work]
    elapsed = time.perf_counter() - started
    gc.unfreeze()
    compared = [decision.candidates_compared for decision in decisions]
    return Result(
        size=size,
        build_seconds=build_seconds,
        us_per_record=elapsed / len(work) * 1e6,
        candidates_per_record=statistics.fmean(compared),
        max_candidates=max(compared),
        decisions=[(kind, truth, d) for (kind, truth, _), d in zip(work, decisions, strict=True)],
    )


def outcomes(result: Result, thresholds: Thresholds) -> Counter[str]:
    """Each query's outcome had the thresholds been these (scores do not depend on them)."""
    counted: Counter[str] = Counter()
    for kind, truth, d in result.decisions:
        decision = decide(d.score, d.runner_up_score, thresholds)
        if decision is Decision.LINK:
            counted[f"{kind}: LINK {'right' if d.enterprise_id == truth else 'WRONG'}"] += 1
        else:
            counted[f"{kind}: {decision.value}"] += 1
    return counted


def accuracy(counted: Counter[str]) -> str:
    duplicates = sum(v for k, v in counted.items() if k.startswith("duplicate"))
    right = counted["duplicate: LINK right"]
    wrong = sum(v for k, v in counted.items() if k.endswith("LINK WRONG"))
    reviews = sum(v for k, v in counted.items() if k.endswith("REVIEW"))
    precision = right / (right + wrong) if right + wrong else 1.0
    recall = right / duplicates if duplicates else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return (
        f"precision {precision:.4f}  recall {recall:.4f}  F1 {f1:.4f}  "
        f"false merges {wrong}  reviews {reviews}"
    )


@dataclass
class StoreResult:
    size: int
    load_seconds: float
    us_per_record: float
    decided: Counter[str]


async def run_store(
    size: int, queries: int, seed: int, thresholds: Thresholds, dsn: str, batch: int
) -> StoreResult:
    """The same population and queries through PostgresIdentityStore, as the worker decides:
    `batch` records per transaction (lookups, match, writes)."""
    rng = random.Random(seed)
    _, persons = build(size, rng)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        started = time.perf_counter()
        await _load(pool, persons)
        load_seconds = time.perf_counter() - started
        work = queries_for(rng, persons, queries)
        requests = [
            IdentityRequest(source=SOURCE_QUERY, local_ids=(f"Patient/q{n}",), demographics=d)
            for n, (_, _, d) in enumerate(work)
        ]
        store = PostgresIdentityStore(pool, thresholds=thresholds)
        decided: Counter[str] = Counter()
        started = time.perf_counter()
        for start in range(0, len(requests), batch):
            for resolution in await store.resolve_batch(requests[start : start + batch]):
                decided[resolution.how.value] += 1
        elapsed = time.perf_counter() - started
    finally:
        await pool.close()
    return StoreResult(size, load_seconds, elapsed / len(requests) * 1e6, decided)


async def _load(pool: asyncpg.Pool, persons: list[Person]) -> None:
    """The known population as the store keeps it, with COPY (deciding 100k patients one by
    one first would measure the load, not the lookups)."""
    views, keys, links = [], [], []
    for n, person in enumerate(persons):
        view = demographics(person, SOURCE_KNOWN)
        eid, view_id = f"E{n:07d}", f"Patient/{n}"
        views.append((SOURCE_KNOWN, view_id, eid, view.model_dump_json()))
        keys += [(key, SOURCE_KNOWN, view_id) for key in sorted(blocking_keys(view))]
        links.append((SOURCE_KNOWN, view_id, eid, "NEW"))
    async with pool.acquire() as conn:
        await conn.execute("TRUNCATE identity_views, identity_block_keys, identity_links")
        await conn.copy_records_to_table(
            "identity_views",
            records=views,
            columns=["source", "view_id", "enterprise_id", "demographics"],
        )
        await conn.copy_records_to_table(
            "identity_block_keys", records=keys, columns=["key", "source", "view_id"]
        )
        await conn.copy_records_to_table(
            "identity_links",
            records=links,
            columns=["source", "local_id", "enterprise_id", "decided_by"],
        )
        await conn.execute("ANALYZE identity_views, identity_block_keys, identity_links")


async def store_part(
    args: argparse.Namespace, thresholds: Thresholds, teardown: Teardown
) -> list[StoreResult]:
    """Each size through the store, in a fresh migrated database (the benchmarks' runner: on
    CONCORD_DATABASE_URL's server, else an embedded PostgreSQL) that `teardown` removes."""
    if not os.environ.get("CONCORD_DATABASE_URL"):
        print("starting an embedded PostgreSQL", file=sys.stderr)
    dsn = await database(teardown.tempdir("identity"), teardown)
    results = []
    for size in args.sizes:
        print(f"PostgreSQL: loading {size} known patients", file=sys.stderr)
        results.append(await run_store(size, args.queries, args.seed, thresholds, dsn, args.batch))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--store",
        action="store_true",
        help="also time the PostgreSQL identity index (embedded, or CONCORD_DATABASE_URL)",
    )
    parser.add_argument("--batch", type=int, default=500, help="records per store batch")
    args = parser.parse_args(argv)
    thresholds = Thresholds()
    print(
        f"thresholds: link {thresholds.link_threshold}, review {thresholds.review_threshold}, "
        f"margin {thresholds.ambiguity_margin}; {args.queries} queries per size"
    )
    results = [run(size, args.queries, args.seed, thresholds) for size in args.sizes]
    print(f"{'known':>8} {'build s':>8} {'µs/record':>10} {'candidates/record':>18} {'max':>5}")
    for r in results:
        print(
            f"{r.size:>8} {r.build_seconds:>8.1f} {r.us_per_record:>10.0f} "
            f"{r.candidates_per_record:>18.1f} {r.max_candidates:>5}"
        )
    if len(results) > 1:
        first, last = results[0], results[-1]
        print(
            f"ratio {last.size}/{first.size}: "
            f"µs/record x{last.us_per_record / first.us_per_record:.2f}, "
            f"candidates/record x{last.candidates_per_record / first.candidates_per_record:.2f}"
        )
    if args.store:
        teardown, failed = Teardown(), True
        try:
            stored = asyncio.run(store_part(args, thresholds, teardown))
            failed = False
        finally:
            teardown.close(failed)  # a failed run keeps its temp dir, with PostgreSQL's log
        print(f"PostgreSQL identity index, {args.batch} records a transaction:")
        print(f"{'known':>8} {'load s':>8} {'µs/record':>10}  decisions")
        for st in stored:
            decisions = dict(sorted(st.decided.items()))
            print(f"{st.size:>8} {st.load_seconds:>8.1f} {st.us_per_record:>10.0f}  {decisions}")
        if len(stored) > 1:
            print(
                f"ratio {stored[-1].size}/{stored[0].size}: µs/record "
                f"x{stored[-1].us_per_record / stored[0].us_per_record:.2f}"
            )
    for r in results:
        counted = outcomes(r, thresholds)
        print(f"outcomes at {r.size}:")
        for key in sorted(counted):
            print(f"  {key:<24} {counted[key]:>5}")
        print(f"  {accuracy(counted)}")
        print("  other link thresholds (review and margin as above):")
        for link in (18.0, 20.0, 22.0, 24.0):
            other = thresholds.model_copy(update={"link_threshold": link})
            print(f"    link {link:>4}: {accuracy(outcomes(r, other))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
