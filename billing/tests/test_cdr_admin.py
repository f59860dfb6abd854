"""The operators' admin for call history: the API's filters on the CDR list, the decision trace
on the detail page, the export page (streamed, or a job with a progress page)."""

import csv
import io

import pytest
from django.urls import reverse

from billing.models import Cdr, ExportJob

pytestmark = pytest.mark.django_db

LIST = "admin:billing_cdr_changelist"


@pytest.fixture
def staff_client(client, staff_user):
    staff_user.is_superuser = True
    staff_user.save()
    client.force_login(staff_user)
    return client


def _shown(response) -> set[int]:
    assert response.status_code == 200, response.content[:500]
    return {cdr.pk for cdr in response.context["cl"].result_list}


@pytest.mark.parametrize(
    "query, expected",
    [
        ({"direction": "inbound"}, {"busy"}),
        ({"answered": "false"}, {"busy", "refused"}),
        ({"final_code": "4xx"}, {"busy"}),
        ({"final_code": "503"}, {"refused"}),
        ({"reason": "cps_limit"}, {"refused"}),
        ({"number": "+1 (415) 555-0100"}, {"answered", "busy", "theirs", "old"}),
        ({"number": "020 7946 0001", "region": "GB"}, {"refused"}),
        (
            {"since": "2026-11-29T00:00:00Z", "until": "2026-11-30T00:00:00Z"},
            {"answered", "busy", "refused", "theirs"},
        ),
        (
            {"since": "2026-11-29T00:00:00Z", "direction": "outbound", "answered": "true"},
            {"answered", "theirs"},
        ),
        ({"q": "+1 415-555-0100"}, {"answered", "busy", "theirs", "old"}),  # the search box too
        ({"setup_at__day": "19", "setup_at__month": "11", "setup_at__year": "2026"}, {"old"}),
    ],
)
def test_list_takes_the_api_filters(query, expected, staff_client, calls):
    got = _shown(staff_client.get(reverse(LIST), query))
    assert got == {getattr(calls, name).pk for name in expected}


def test_customer_and_trunk_filters(staff_client, calls, other_customer, other_trunk):
    assert _shown(staff_client.get(reverse(LIST), {"customer": other_customer.pk})) == {
        calls.theirs.pk
    }
    assert _shown(staff_client.get(reverse(LIST), {"trunk": other_trunk.pk})) == {calls.theirs.pk}


@pytest.mark.parametrize("query", [{"number": "nope"}, {"final_code": "9xx"}, {"since": "x"}])
def test_bad_filter_values_are_reported_not_crashing(query, staff_client, calls):
    response = staff_client.get(reverse(LIST), query)
    assert response.status_code == 302
    assert response["Location"].endswith("?e=1")


def test_detail_shows_a_readable_decision_trace(staff_client, calls):
    page = staff_client.get(reverse("admin:billing_cdr_change", args=[calls.answered.pk]))
    html = page.content.decode()
    assert '<table class="decision-trace">' in html
    for cell in ("sip:198.51.100.7:5060", "503", "failover", "sip:198.51.100.8:5060", "answered"):
        assert f"<td>{cell}</td>" in html, cell
    assert "Final answer to the caller: <strong>200 </strong> (normal_clearing)" in html
    refused = staff_client.get(reverse("admin:billing_cdr_change", args=[calls.refused.pk]))
    assert "No route was tried." in refused.content.decode()


def test_list_links_to_the_export_of_what_it_shows(staff_client, calls):
    html = staff_client.get(reverse(LIST), {"direction": "inbound"}).content.decode()
    assert f'href="{reverse("admin:billing_cdr_export")}?direction=inbound"' in html


def test_export_page_streams_the_filtered_list(staff_client, calls):
    url = reverse("admin:billing_cdr_export") + "?direction=outbound&since=2026-11-29T00:00:00Z"
    form = staff_client.get(url)
    assert form.status_code == 200
    assert b"direction=outbound" in form.content
    response = staff_client.post(url, {"format": "csv", "columns": ["id", "reason"]})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows == [
        {"id": str(calls.answered.pk), "reason": "normal_clearing"},
        {"id": str(calls.theirs.pk), "reason": "normal_clearing"},
        {"id": str(calls.refused.pk), "reason": "cps_limit"},
    ]


def test_export_page_keeps_the_date_drill_down(staff_client, calls):
    url = reverse("admin:billing_cdr_export") + "?setup_at__year=2026&setup_at__month=11"
    response = staff_client.post(url, {"format": "jsonl", "columns": ["id"]})
    lines = b"".join(response.streaming_content).splitlines()
    assert len(lines) == 5  # November: all five calls
    url = reverse("admin:billing_cdr_export") + "?setup_at__year=2026&setup_at__month=12"
    assert (
        b"".join(staff_client.post(url, {"format": "csv", "columns": ["id"]}).streaming_content)
        == b"id\n"
    )


def test_export_page_refuses_bad_choices(staff_client, calls):
    response = staff_client.post(
        reverse("admin:billing_cdr_export"), {"format": "pdf", "columns": ["id"]}
    )
    assert response.status_code == 200
    assert "format" in response.context["form"].errors


@pytest.mark.django_db(transaction=True)
def test_large_export_becomes_a_job_with_a_progress_page(staff_client, calls, settings, job_env):
    settings.CDR_EXPORT_JOB_THRESHOLD_ROWS = 2
    url = reverse("admin:billing_cdr_export") + "?answered=true"
    response = staff_client.post(url, {"format": "csv", "columns": ["id", "setup_at"]})
    job = ExportJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:billing_exportjob_progress", args=[job.pk])
    assert (job.filters, job.customer_id, job.status) == ({"answered": "true"}, None, "done")
    assert job.rows_total == 3  # answered: Acme's two (one old) and Globex's one
    page = staff_client.get(response["Location"]).content.decode()
    assert f'data-status-url="/api/v1/cdr-exports/{job.pk}/"' in page
    assert "billing/export_progress.js" in page
    assert '<progress id="export-bar" max="100" value="100">' in page
    assert f'href="/api/v1/cdr-exports/{job.pk}/download/"' in page
    # The page's script polls the API with the admin's session, and downloads the same way.
    status = staff_client.get(f"/api/v1/cdr-exports/{job.pk}/", HTTP_ACCEPT="application/json")
    assert status.json()["progress"] == 1.0
    download = staff_client.get(f"/api/v1/cdr-exports/{job.pk}/download/")
    assert len(b"".join(download.streaming_content).splitlines()) == 4
    jobs = staff_client.get(reverse("admin:billing_exportjob_changelist")).content.decode()
    assert '<progress max="100" value="100">' in jobs


def test_members_of_customers_cannot_open_the_admin(client, member, calls):
    client.force_login(member)
    for url in (reverse(LIST), reverse("admin:billing_cdr_export")):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"]
    assert Cdr.objects.count() == 5
