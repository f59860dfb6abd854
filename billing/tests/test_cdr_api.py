"""Call history in the API: who sees which calls, every filter, the summary's figures.

The access matrix of `core/tests/test_access_matrix.py`, for the CDR endpoints: a customer's
members of every role read their own calls only, another tenant's ids answer 404, staff see all,
anonymous callers 401; every filter is checked for what it keeps and for a 400 naming it when
its value is bad. Runs on SQLite and on PostgreSQL (DATABASE_URL).
"""

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.tests.conftest import DAY, READERS
from edge.cdr import iso_utc
from edge.tests.test_cdr import SETUP, make_cdr

pytestmark = pytest.mark.django_db


def _ids(response) -> set[int]:
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


@pytest.mark.parametrize("who", [*READERS, "other_customer", "staff", "anonymous"])
def test_list_access(who, reader_as, calls):
    response = reader_as(who).get(f"/api/v1/cdrs/?{DAY}")
    if who == "anonymous":
        assert response.status_code == 401
        return
    expected = {
        "other_customer": {calls.theirs.pk},
        "staff": calls.mine_in_day | {calls.theirs.pk},
    }.get(who, calls.mine_in_day)
    assert _ids(response) == expected


@pytest.mark.parametrize(
    "who, mine, theirs",
    [
        ("owner", 200, 404),
        ("read_only", 200, 404),
        ("billing", 200, 404),
        ("other_customer", 404, 200),
        ("staff", 200, 200),
        ("anonymous", 401, 401),
    ],
)
def test_retrieve_access(who, mine, theirs, reader_as, calls):
    client = reader_as(who)
    assert client.get(f"/api/v1/cdrs/{calls.answered.pk}/").status_code == mine
    assert client.get(f"/api/v1/cdrs/{calls.theirs.pk}/").status_code == theirs


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_cdrs_cannot_be_written(method, reader_as, calls):
    response = getattr(reader_as("staff"), method)(f"/api/v1/cdrs/{calls.answered.pk}/", {})
    assert response.status_code == 405
    assert getattr(reader_as("owner"), method)("/api/v1/cdrs/", {}).status_code in (403, 405)


def test_retrieve_gives_the_decision_trace(reader_as, calls):
    body = reader_as("owner").get(f"/api/v1/cdrs/{calls.answered.pk}/").json()
    assert body["decision_trace"] == {
        "routes": [
            {
                "target": "sip:198.51.100.7:5060",
                "kind": "gateway",
                "status": 503,
                "reason": "failover",
            },
            {
                "target": "sip:198.51.100.8:5060",
                "kind": "gateway",
                "status": 200,
                "reason": "answered",
            },
        ],
        "answered_by": "sip:198.51.100.8:5060",
        "final_code": 200,
        "reason": "normal_clearing",
        "hangup_side": "caller",
        "config_version": 42,
    }
    assert body["trunk_name"] == "pbx-1"
    assert body["answered"] is True
    assert body["setup_at"] == "2026-11-29T08:00:00.123000Z"


@pytest.mark.parametrize(
    "query, field",
    [
        ("", "since"),
        ("since=2026-11-29T00:00:00Z", "until"),
        ("until=2026-11-30T00:00:00Z", "since"),
        ("since=yesterday&until=2026-11-30T00:00:00Z", "since"),
        ("since=2026-11-30T00:00:00Z&until=2026-11-29T00:00:00Z", "until"),
        ("since=2026-01-01T00:00:00Z&until=2026-11-30T00:00:00Z", "until"),  # > 93 days
    ],
)
@pytest.mark.parametrize("endpoint", ["cdrs", "cdrs/summary", "cdrs/export"])
def test_period_is_required_and_bounded(endpoint, query, field, reader_as, calls):
    response = reader_as("owner").get(f"/api/v1/{endpoint}/?{query}")
    assert response.status_code == 400, response.content
    assert field in response.json()


def test_period_bounds_the_list(reader_as, calls):
    whole = _ids(
        reader_as("owner").get(
            "/api/v1/cdrs/?since=2026-11-01T00:00:00Z&until=2026-12-01T00:00:00Z"
        )
    )
    assert whole == calls.mine_in_day | {calls.old.pk}
    # The start is inclusive, the end exclusive: a call at 08:01:00.123 is in [08:01:00.123, ...).
    start = "2026-11-29T08:01:00.123Z"
    assert _ids(
        reader_as("owner").get(f"/api/v1/cdrs/?since={start}&until=2026-11-29T08:02:00.123Z")
    ) == {calls.busy.pk}


@pytest.mark.parametrize(
    "query, expected",
    [
        ("direction=inbound", {"busy"}),
        ("direction=outbound", {"answered", "refused"}),
        ("number=%2B14155550100", {"answered", "busy"}),  # caller of one, callee of the other
        ("number=%2B1 (415) 555-0100", {"answered", "busy"}),
        ("number=%2B44 20 7946 0001", {"refused"}),
        ("number=020 7946 0001&region=GB", {"refused"}),
        ("number=0033 1 42 68 53 00&region=FR", {"busy"}),
        ("final_code=486", {"busy"}),
        ("final_code=5xx", {"refused"}),
        ("final_code=2XX", {"answered"}),
        ("reason=cps_limit", {"refused"}),
        ("answered=true", {"answered"}),
        ("answered=false", {"busy", "refused"}),
        ("edge=edge-2", set()),
    ],
)
def test_filters(query, expected, reader_as, calls):
    got = _ids(reader_as("owner").get(f"/api/v1/cdrs/?{DAY}&{query}"))
    assert got == {getattr(calls, name).pk for name in expected}


FILTER_QUERIES = [
    "direction=outbound",
    "number=%2B14155550100",
    "final_code=2xx",
    "reason=normal_clearing",
    "answered=true",
    "edge=edge-1",
]


@pytest.mark.parametrize("query", FILTER_QUERIES)
@pytest.mark.parametrize("who", ["other_customer", "staff", "anonymous"])
def test_no_filter_reaches_across_tenants(who, query, reader_as, calls):
    """Each filter matches calls of both tenants; each tenant still sees only its own."""
    client = reader_as(who)
    listed: set[int] = set()
    for endpoint in ("cdrs", "cdrs/export"):
        response = client.get(f"/api/v1/{endpoint}/?{DAY}&{query}&columns=id")
        if who == "anonymous":
            assert response.status_code == 401
            continue
        if endpoint == "cdrs":
            ids = _ids(response)
        else:
            lines = b"".join(response.streaming_content).decode().split()
            ids = {int(line) for line in lines[1:]}
        assert calls.theirs.pk in ids
        assert bool(ids & calls.mine_in_day) == (who == "staff"), (endpoint, ids)
        listed = listed or ids
        assert ids == listed
    if who != "anonymous":
        attempts = client.get(f"/api/v1/cdrs/summary/?{DAY}&{query}").json()["attempts"]
        assert attempts == len(listed)


def test_trunk_filter_is_tenant_scoped(reader_as, calls, trunk, other_trunk):
    owner = reader_as("owner")
    assert _ids(owner.get(f"/api/v1/cdrs/?{DAY}&trunk={trunk.pk}")) == calls.mine_in_day
    # Another tenant's trunk is no error (that would tell it exists), it matches nothing.
    assert _ids(owner.get(f"/api/v1/cdrs/?{DAY}&trunk={other_trunk.pk}")) == set()
    assert _ids(reader_as("staff").get(f"/api/v1/cdrs/?{DAY}&trunk={other_trunk.pk}")) == {
        calls.theirs.pk
    }


def test_customer_filter_cannot_widen_a_tenant(reader_as, calls, other_customer, customer):
    assert (
        _ids(reader_as("owner").get(f"/api/v1/cdrs/?{DAY}&customer={other_customer.pk}")) == set()
    )
    assert _ids(reader_as("staff").get(f"/api/v1/cdrs/?{DAY}&customer={customer.pk}")) == (
        calls.mine_in_day
    )


@pytest.mark.parametrize(
    "query, field",
    [
        ("number=not-a-number", "number"),
        ("number=555", "number"),
        ("number=020 7946 0001&region=XX", "region"),
        ("final_code=abc", "final_code"),
        ("final_code=99", "final_code"),
        ("direction=sideways", "direction"),
        ("answered=maybe", "answered"),
        ("trunk=pbx-1", "trunk"),
    ],
)
def test_bad_filter_values_are_400_naming_the_field(query, field, reader_as, calls):
    response = reader_as("owner").get(f"/api/v1/cdrs/?{DAY}&{query}")
    assert response.status_code == 400, response.content
    assert field in response.json()


def test_cursor_pagination_walks_newest_first(reader_as, calls):
    client = reader_as("owner")
    url = f"/api/v1/cdrs/?{DAY}&page_size=2"
    seen = []
    while url:
        body = client.get(url).json()
        assert "count" not in body  # no COUNT over a table of millions
        seen += [row["id"] for row in body["results"]]
        url = body["next"]
    assert seen == [calls.refused.pk, calls.busy.pk, calls.answered.pk]


@pytest.mark.parametrize("who", ["owner", "staff"])
def test_list_query_count_is_constant(who, reader_as, calls, customer, trunk):
    client = reader_as(who)
    client.get(f"/api/v1/cdrs/?{DAY}")  # a key's first use records last_used_at
    counts = []
    for extra in (0, 20):
        records = [
            make_cdr(customer_id=customer.pk, trunk_id=trunk.pk, setup_at=iso_utc(SETUP + 200 + i))
            for i in range(extra)
        ]
        from billing.services import cdrs_ingest

        cdrs_ingest(records=records)
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(f"/api/v1/cdrs/?{DAY}&page_size=100")
        assert len(response.json()["results"]) >= 3 + extra
        counts.append(len(ctx))
    # Customer key: the key lookup and the page; staff (session): session, user, the page.
    assert counts == [2, 2] if who == "owner" else counts == [3, 3], counts


# --- summary ---------------------------------------------------------------------------------


def test_summary_figures(reader_as, calls, trunk):
    body = reader_as("billing").get(f"/api/v1/cdrs/summary/?{DAY}").json()
    # Three attempts, one answered with 61.2 s of talk and 62 billable seconds.
    expected_figures = {
        "attempts": 3,
        "answered": 1,
        "asr": "0.3333",
        "acd_seconds": "61.20",
        "minutes": "1.02",
        "billable_minutes": "1.03",
    }
    assert {k: body[k] for k in expected_figures} == expected_figures
    assert body["since"] == "2026-11-29T00:00:00Z"
    assert body["by_trunk"] == [{"trunk": trunk.pk, "trunk_name": "pbx-1", **expected_figures}]
    assert body["by_reason"] == [
        {"reason": "busy", "attempts": 1, "answered": 0, "share": "0.3333"},
        {"reason": "cps_limit", "attempts": 1, "answered": 0, "share": "0.3333"},
        {"reason": "normal_clearing", "attempts": 1, "answered": 1, "share": "0.3333"},
    ]


@pytest.mark.parametrize(
    "who, attempts",
    [("owner", 3), ("read_only", 3), ("billing", 3), ("other_customer", 1), ("staff", 4)],
)
def test_summary_access(who, attempts, reader_as, calls):
    assert reader_as(who).get(f"/api/v1/cdrs/summary/?{DAY}").json()["attempts"] == attempts
    assert reader_as("anonymous").get(f"/api/v1/cdrs/summary/?{DAY}").status_code == 401


def test_summary_takes_the_filters_and_an_empty_period(reader_as, calls):
    client = reader_as("owner")
    assert client.get(f"/api/v1/cdrs/summary/?{DAY}&direction=inbound").json()["attempts"] == 1
    empty = client.get(
        "/api/v1/cdrs/summary/?since=2026-10-01T00:00:00Z&until=2026-10-02T00:00:00Z"
    )
    assert empty.json() | {"since": None, "until": None} == {
        "since": None,
        "until": None,
        "attempts": 0,
        "answered": 0,
        "asr": None,
        "acd_seconds": None,
        "minutes": "0.00",
        "billable_minutes": "0.00",
        "by_trunk": [],
        "by_reason": [],
    }


def test_summary_queries_are_constant(reader_as, calls, customer, trunk):
    from billing.services import cdrs_ingest

    client = reader_as("owner")
    client.get(f"/api/v1/cdrs/summary/?{DAY}")
    with CaptureQueriesContext(connection) as before:
        client.get(f"/api/v1/cdrs/summary/?{DAY}")
    cdrs_ingest(
        records=[
            make_cdr(
                customer_id=customer.pk,
                trunk_id=trunk.pk + 1000 + i,
                reason=f"r{i}",
                setup_at=iso_utc(SETUP + 300 + i),
            )
            for i in range(10)
        ]
    )
    with CaptureQueriesContext(connection) as after:
        body = client.get(f"/api/v1/cdrs/summary/?{DAY}").json()
    assert len(body["by_trunk"]) == 11 and body["attempts"] == 13
    assert body["by_trunk"][-1]["trunk_name"] is None  # a deleted trunk keeps its figures
    assert len(before) == len(after) == 5  # key, totals, by trunk, by reason, trunk names
    assert Decimal(body["asr"]) == (Decimal(11) / 13).quantize(Decimal("0.0001"))
