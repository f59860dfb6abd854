"""Who may do what, for every API endpoint (NetBox's declarative access tests).

Each endpoint is exercised against the five kinds of caller: the owning customer (an admin API
key), another customer, a read-only member of the owner, staff (browser session) and anonymous.
Another tenant's object must be indistinguishable from a missing one (404).
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from accounts import audit
from accounts import services as account_services
from accounts.choices import AuditAction
from core.tenancy import SYSTEM

Payload = Callable[[Any], dict[str, Any]]  # given the fixture lookup, the request body


@dataclass(frozen=True)
class Endpoint:
    path: str
    obj: str  # fixture holding the owning customer's object
    create: Payload
    update: dict[str, Any] | None  # None: the object is replaced, not edited (405)
    expect: dict[str, dict[str, int]] = field(default_factory=dict)
    staff_needs: Payload = lambda f: {"customer": f("customer").pk}


def _codes(
    owner: int, other: int, read_only: int, staff: int, anonymous: int = 401
) -> dict[str, int]:
    return {
        "owner": owner,
        "other_customer": other,
        "read_only": read_only,
        "staff": staff,
        "anonymous": anonymous,
    }


TENANT = {
    "list": _codes(200, 200, 200, 200),
    "retrieve": _codes(200, 404, 200, 200),
    "update": _codes(200, 404, 403, 200),
    "delete": _codes(204, 404, 403, 204),
    "create": _codes(201, 201, 403, 201),
}
# Objects under a trunk: another customer naming our trunk gets a 400 on the trunk field.
TENANT_CHILD = {**TENANT, "create": _codes(201, 400, 403, 201)}
STAFF_ONLY = {
    "list": _codes(403, 403, 403, 200),
    "retrieve": _codes(403, 403, 403, 200),
    "update": _codes(403, 403, 403, 200),
    "delete": _codes(403, 403, 403, 204),
    "create": _codes(403, 403, 403, 201),
}
OPERATOR_WRITES = {
    "list": _codes(200, 200, 200, 200),
    "retrieve": _codes(200, 404, 200, 200),
    "update": _codes(403, 403, 403, 200),
    "delete": _codes(403, 403, 403, 204),
    "create": _codes(403, 403, 403, 201),
}


def _trunk_child(extra: dict[str, Any]) -> Payload:
    return lambda f: {"trunk": f("trunk").pk, **extra}


ENDPOINTS = [
    Endpoint(
        "customers",
        "customer",
        lambda f: {"name": "Initech"},
        {"credit_limit": "5.00"},
        OPERATOR_WRITES,
        staff_needs=lambda f: {},
    ),
    Endpoint(
        "users",
        "member",
        lambda f: {
            "username": "bob",
            "email": "bob@acme.test",
            "role": "read_only",
            "password": "s3cret-password",
        },
        {"email": "alice@new.test"},
        TENANT,
    ),
    Endpoint(
        "api-keys",
        "api_key",
        lambda f: {"name": "script", "role": "read_only"},
        {"name": "renamed"},
        TENANT,
    ),
    Endpoint("trunks", "trunk", lambda f: {"name": "pbx-2"}, {"max_channels": 30}, TENANT),
    Endpoint(
        "acl-entries",
        "acl_entry",
        _trunk_child({"cidr": "198.51.100.0/24"}),
        {"description": "office"},
        TENANT_CHILD,
        staff_needs=lambda f: {},
    ),
    Endpoint(
        "credentials",
        "credential_row",
        _trunk_child({"username": "acme-2"}),
        None,
        TENANT_CHILD,
        staff_needs=lambda f: {},
    ),
    Endpoint(
        "origination-uris",
        "origination_uri",
        _trunk_child({"uri": "sip:backup.acme.test;transport=tcp"}),
        {"priority": 20},
        TENANT_CHILD,
        staff_needs=lambda f: {},
    ),
    Endpoint(
        "numbers",
        "number",
        _trunk_child({"number": "+14155550123"}),
        {"description": "main line"},
        TENANT_CHILD,
    ),
    Endpoint(
        "carriers",
        "carrier",
        lambda f: {"name": "Carrier Two"},
        {"enabled": False},
        STAFF_ONLY,
        staff_needs=lambda f: {},
    ),
    Endpoint(
        "carrier-gateways",
        "gateway",
        lambda f: {"carrier": f("carrier").pk, "host": "203.0.113.9"},
        {"priority": 5},
        STAFF_ONLY,
        staff_needs=lambda f: {},
    ),
    Endpoint(
        "edge-nodes",
        "edge_node",
        lambda f: {"name": "edge-2", "control_url": "http://127.0.0.1:8082"},
        {"enabled": False},
        STAFF_ONLY,
        staff_needs=lambda f: {},
    ),
]


@pytest.fixture
def api_key(customer):
    return account_services.api_key_create(actor=SYSTEM, customer=customer, name="ci").api_key


@pytest.fixture
def credential_row(credential):
    return credential.credential


def _cases(operation: str) -> list[Any]:
    return [
        pytest.param(ep, who, ep.expect[operation][who], id=f"{ep.path}-{who}")
        for ep in ENDPOINTS
        for who in ep.expect[operation]
    ]


@pytest.mark.parametrize("endpoint, who, expected", _cases("list"))
def test_list(endpoint, who, expected, api_as, request):
    obj = request.getfixturevalue(endpoint.obj)
    response = api_as(who).get(f"/api/v1/{endpoint.path}/")
    assert response.status_code == expected, response.content
    if expected == 200:
        ids = {row["id"] for row in response.json()["results"]}
        assert (obj.pk in ids) == (who != "other_customer")


@pytest.mark.parametrize("endpoint, who, expected", _cases("retrieve"))
def test_retrieve(endpoint, who, expected, api_as, request):
    obj = request.getfixturevalue(endpoint.obj)
    response = api_as(who).get(f"/api/v1/{endpoint.path}/{obj.pk}/")
    assert response.status_code == expected, response.content
    if expected == 200:
        assert response.json()["id"] == obj.pk


@pytest.mark.parametrize("endpoint, who, expected", _cases("update"))
def test_update(endpoint, who, expected, api_as, request):
    obj = request.getfixturevalue(endpoint.obj)
    client = api_as(who)
    if endpoint.update is None:
        assert client.patch(f"/api/v1/{endpoint.path}/{obj.pk}/", {}).status_code in (405, expected)
        return
    response = client.patch(f"/api/v1/{endpoint.path}/{obj.pk}/", endpoint.update)
    assert response.status_code == expected, response.content
    obj.refresh_from_db()
    for name, value in endpoint.update.items():
        changed = str(getattr(obj, name)) in (str(value), f"{value}00")
        assert changed == (expected == 200), name


@pytest.mark.parametrize("endpoint, who, expected", _cases("delete"))
def test_delete(endpoint, who, expected, api_as, request):
    obj = request.getfixturevalue(endpoint.obj)
    response = api_as(who).delete(f"/api/v1/{endpoint.path}/{obj.pk}/")
    assert response.status_code == expected, response.content
    model = type(obj)
    still_there = model.objects.filter(pk=obj.pk).exists()
    if endpoint.path == "api-keys":  # a deleted key is revoked, kept for the record
        obj.refresh_from_db()
        assert (obj.revoked_at is not None) == (expected == 204)
    else:
        assert still_there == (expected != 204)


@pytest.mark.parametrize("endpoint, who, expected", _cases("create"))
def test_create(endpoint, who, expected, api_as, request):
    request.getfixturevalue(endpoint.obj)
    body = endpoint.create(request.getfixturevalue)
    if who == "staff":
        body |= endpoint.staff_needs(request.getfixturevalue)
    response = api_as(who).post(f"/api/v1/{endpoint.path}/", body)
    assert response.status_code == expected, response.content
    if expected == 400:
        assert "trunk" in response.json()


def test_audit_log_access(api_as, trunk, other_trunk):
    mine, theirs = (
        audit.record(actor=SYSTEM, obj=owned, action=AuditAction.CREATE)
        for owned in (trunk, other_trunk)
    )
    expected_ids = {
        "owner": {trunk.pk},
        "read_only": {trunk.pk},
        "other_customer": {other_trunk.pk},
        "staff": {trunk.pk, other_trunk.pk},
    }
    for who, ids in expected_ids.items():
        response = api_as(who).get("/api/v1/audit-log/?object_type=trunk")
        assert response.status_code == 200
        assert {int(row["object_id"]) for row in response.json()["results"]} == ids, who
    assert api_as("anonymous").get("/api/v1/audit-log/").status_code == 401
    assert api_as("owner").get(f"/api/v1/audit-log/{mine.pk}/").status_code == 200
    assert api_as("owner").get(f"/api/v1/audit-log/{theirs.pk}/").status_code == 404
    assert api_as("staff").get(f"/api/v1/audit-log/{theirs.pk}/").status_code == 200
    assert api_as("owner").post("/api/v1/audit-log/", {}).status_code == 405
    assert api_as("read_only").delete(f"/api/v1/audit-log/{mine.pk}/").status_code == 403


# --- filters: another tenant's id answers like a missing id -----------------------------------

# For each model a list can be filtered by: (the owner's object, another tenant's object).
# A relation filter on a model missing here fails the test below: add the model.
FILTER_OBJECTS = {
    "customer": ("customer", "other_customer"),
    "trunk": ("trunk", "other_trunk"),
    "carrier": ("carrier", "carrier"),  # not a tenant's: staff-only lists
    "ratedeck": ("rate_deck", "other_rate_deck"),
}
# Lists that answer only with some parameters (call history needs a period).
LIST_PARAMS = {"cdrs": {"since": "2026-11-01T00:00:00Z", "until": "2026-12-01T00:00:00Z"}}


def _id_filters() -> list[Any]:
    """Every filter of every registered list that takes an object's id: relation filters,
    and number filters named after a model of FILTER_OBJECTS (``users/?customer=``)."""
    from django_filters.filters import NumberFilter, QuerySetRequestMixin

    from config.api_urls import router

    cases = []
    for prefix, viewset, _ in router.registry:
        filterset = getattr(viewset, "filterset_class", None)
        for name, filter_ in filterset.base_filters.items() if filterset else ():
            if isinstance(filter_, QuerySetRequestMixin):
                model = filter_.queryset.model._meta.model_name
            elif isinstance(filter_, NumberFilter) and name in FILTER_OBJECTS:
                model = name
            else:
                continue
            relation = isinstance(filter_, QuerySetRequestMixin)
            cases.append(pytest.param(prefix, name, model, relation, id=f"{prefix}-{name}"))
    return cases


@pytest.mark.parametrize("path, name, model, relation", _id_filters())
def test_filters_answer_another_tenants_id_like_a_missing_one(
    path, name, model, relation, api_as, request
):
    mine, theirs = (request.getfixturevalue(fixture) for fixture in FILTER_OBJECTS[model])
    missing = type(theirs).objects.order_by("-pk").values_list("pk", flat=True)[0] + 1000
    for who, sees_theirs in (("owner", False), ("read_only", False), ("staff", True)):
        client = api_as(who)
        base = LIST_PARAMS.get(path, {})
        listed = client.get(f"/api/v1/{path}/", base)
        if listed.status_code == 403:  # a staff-only list: nothing to filter
            continue
        own = client.get(f"/api/v1/{path}/", {**base, name: mine.pk})
        other = client.get(f"/api/v1/{path}/", {**base, name: theirs.pk})
        absent = client.get(f"/api/v1/{path}/", {**base, name: missing})
        assert own.status_code == 200, (who, own.content)
        if relation:
            assert absent.status_code == 400 and name in absent.json(), (who, absent.content)
        if sees_theirs:
            assert other.status_code == 200, (who, other.content)
        else:
            assert (other.status_code, other.json()) == (absent.status_code, absent.json()), who
