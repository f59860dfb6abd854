"""The JSON API answers JSON, in one error shape, and ignores nothing silently (issue 10, 4-5)."""

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from trunking.models import Trunk


def _is_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert body["code"] == code and isinstance(body["detail"], str), body
    return body


@override_settings(DEBUG=True)  # the HTML debug pages are what DEBUG would show
def test_unknown_api_url_is_json_404(api_as):
    client = api_as("owner")
    _is_error(client.get("/api/v1/no-such-thing/"), 404, "not_found")
    _is_error(client.get("/api/nothing"), 404, "not_found")
    body = _is_error(client.post("/api/v1/trunks", {}), 404, "not_found")
    assert "/api/v1/trunks/" in body["detail"]  # points at the URL with the slash


def test_wrong_method_is_json_405(api_as, credential):
    path = f"/api/v1/credentials/{credential.credential.pk}/"
    _is_error(api_as("owner").put(path, {}), 405, "method_not_allowed")


@override_settings(DEBUG=True)
def test_unhandled_error_is_json_500(api_as, monkeypatch):
    from trunking.api import views

    def boom(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(views.TrunkViewSet, "list", boom)
    client = api_as("owner")
    client.raise_request_exception = False
    response = client.get("/api/v1/trunks/", HTTP_X_REQUEST_ID="req-500")
    body = _is_error(response, 500, "server_error")
    assert "req-500" in body["detail"] and "bug" not in body["detail"]


def test_throttled_is_json_429(api_as, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"api": "2/m"}}
    client = api_as("owner")
    assert client.get("/api/v1/trunks/").status_code == 200
    assert client.get("/api/v1/trunks/").status_code == 200
    response = client.get("/api/v1/trunks/")
    _is_error(response, 429, "throttled")
    assert int(response["Retry-After"]) > 0


def test_validation_error_shape_names_the_field(api_as, trunk):
    body = _is_error(
        api_as("owner").post("/api/v1/acl-entries/", {"trunk": trunk.pk, "cidr": "10.0.0.300/8"}),
        400,
        "invalid",
    )
    assert body["cidr"]


@pytest.mark.parametrize(
    "query, field",
    [
        ("customer=99999999999999999999", "customer"),
        ("max_channels_bogus=1", "max_channels_bogus"),
        ("ordering=channel_limit", "ordering"),
        ("ordering=name,-nope", "ordering"),
        ("status=bogus", "status"),
        ("registration_allowed=maybe", "registration_allowed"),
    ],
)
def test_bad_list_queries_are_400_naming_the_parameter(api_as, trunk, query, field):
    client = api_as("staff")
    body = _is_error(client.get(f"/api/v1/trunks/?{query}"), 400, "invalid")
    assert field in body, body


@pytest.mark.parametrize(
    "path", ["/api/v1/numbers/?trunk=99999999999999999999", "/api/v1/audit-log/?customer=-1"]
)
def test_out_of_range_ids_are_400(api_as, path):
    _is_error(api_as("staff").get(path), 400, "invalid")


def test_known_queries_still_work(api_as, trunk):
    response = api_as("owner").get("/api/v1/trunks/?ordering=-name&search=pbx&page_size=5&page=1")
    assert response.status_code == 200 and response.json()["count"] == 1


def test_unknown_field_in_a_write_is_400_and_nothing_changes(api_as, trunk):
    client = api_as("owner")
    body = _is_error(
        client.patch(f"/api/v1/trunks/{trunk.pk}/", {"channel_limit": 2, "max_cps": 2}),
        400,
        "invalid",
    )
    assert body["channel_limit"] == ["Unknown field."] and "max_cps" not in body
    trunk.refresh_from_db()
    assert trunk.max_cps == 5
    body = _is_error(
        client.post("/api/v1/trunks/", {"name": "x", "channel_limit": 2}), 400, "invalid"
    )
    assert "channel_limit" in body
    assert not Trunk.objects.filter(name="x").exists()


def test_read_only_fields_refused_unless_echoed(api_as, trunk):
    client = api_as("owner")
    current = client.get(f"/api/v1/trunks/{trunk.pk}/").json()
    # Sending back what a GET returned is fine ...
    assert client.put(f"/api/v1/trunks/{trunk.pk}/", current).status_code == 200
    # ... changing a read-only field is not silently ignored.
    body = _is_error(
        client.patch(f"/api/v1/trunks/{trunk.pk}/", {"status": "suspended"}), 400, "invalid"
    )
    assert body["status"] == ["This field is read-only."]


@pytest.mark.parametrize("text", ["evil\nname", "tab\there", "nul\x00", "esc\x1b[31m"])
def test_names_and_descriptions_refuse_control_characters(api_as, trunk, text):
    client = api_as("owner")
    body = _is_error(client.post("/api/v1/trunks/", {"name": text}), 400, "invalid")
    assert "name" in body
    body = _is_error(
        client.post(
            "/api/v1/acl-entries/", {"trunk": trunk.pk, "cidr": "192.0.2.9", "description": text}
        ),
        400,
        "invalid",
    )
    assert "description" in body


def test_integer_bounds_are_the_columns_on_every_database(api_as, trunk):
    client = api_as("owner")
    body = _is_error(
        client.patch(f"/api/v1/trunks/{trunk.pk}/", {"max_channels": 99999999999999999999}),
        400,
        "invalid",
    )
    assert "max_channels" in body


def test_staff_must_name_the_customer_but_customers_need_not(api_as, customer):
    body = _is_error(api_as("staff").post("/api/v1/trunks/", {"name": "t1"}), 400, "invalid")
    assert "customer" in body
    response = api_as("owner").post("/api/v1/trunks/", {"name": "t1"})
    assert response.status_code == 201 and response.json()["customer"] == customer.pk
    # Naming one's own customer is fine, another's is refused.
    assert (
        api_as("owner").post("/api/v1/trunks/", {"name": "t2", "customer": customer.pk}).status_code
        == 201
    )
    body = _is_error(
        api_as("owner").post("/api/v1/trunks/", {"name": "t3", "customer": customer.pk + 1000}),
        400,
        "invalid",
    )


def test_anonymous_is_json_401():
    _is_error(APIClient().get("/api/v1/trunks/"), 401, "not_authenticated")
