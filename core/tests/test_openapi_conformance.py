"""The OpenAPI document tells the truth: schemathesis sends every operation (DELETE included)
generated from the document, as a customer and as staff, and checks each answer against it:
no server error, no status code the document does not list, every body matching its schema
(issue 10, item 3).

Bounded: at most ``OPENAPI_MAX_EXAMPLES`` generated requests per operation (default 15), each sent
by both callers, valid and invalid ones: a minute or two. The app runs in-process (WSGI) on
the test database.
"""

import json
import os

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts import services as account_services
from accounts.choices import Role
from core.tenancy import SYSTEM
from trunking import services as trunking_services
from trunking.models import IpAclEntry, OriginationUri, PhoneNumber, Trunk

MAX_EXAMPLES = int(os.environ.get("OPENAPI_MAX_EXAMPLES", "15"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _load_schema() -> schemathesis.schemas.BaseSchema:
    """The document /api/schema/ serves, made by the same generator, sent to the WSGI app."""
    from drf_spectacular.generators import SchemaGenerator

    from config.wsgi import application

    document = json.loads(json.dumps(SchemaGenerator().get_schema(request=None, public=True)))
    loaded = schemathesis.openapi.from_dict(document)
    # Examples and fuzzing, bounded by max_examples; the coverage phase (every boundary case of
    # every parameter, unbounded) would take most of CI's budget on its own.
    loaded.config.phases.update(phases=["examples", "fuzzing"])
    loaded.app = application
    return loaded


schema = _load_schema()


@pytest.fixture(autouse=True)
def _unthrottled_local_app(settings):
    settings.ALLOWED_HOSTS = ["localhost", "testserver", "127.0.0.1"]
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"api": "100000/s"},
    }
    # As Django's test client does: a request's end must not close the test's connection
    # (on PostgreSQL that would end the test's transaction).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def callers(customer, other_customer):
    """API keys of a customer (admin role) and of staff, and objects for them to find."""
    trunk = Trunk.objects.create(customer=customer, name="pbx-1")
    IpAclEntry.objects.create(trunk=trunk, cidr="192.0.2.0/24")
    OriginationUri.objects.create(trunk=trunk, uri="sip:pbx.acme.test")
    PhoneNumber.objects.create(number="+14155550100", customer=customer, trunk=trunk)
    trunking_services.credential_create(actor=SYSTEM, trunk=trunk, username="acme-pbx")
    Trunk.objects.create(customer=other_customer, name="other")
    customer_key = account_services.api_key_create(
        actor=SYSTEM, customer=customer, name="customer", role=Role.ADMIN
    )
    staff_key = account_services.api_key_create(actor=SYSTEM, customer=None, name="staff")
    return [{"Authorization": f"Api-Key {key.secret}"} for key in (customer_key, staff_key)]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case, callers):
    for headers in callers:  # the customer's key, then staff's
        case.call_and_validate(headers=headers, checks=CHECKS)
