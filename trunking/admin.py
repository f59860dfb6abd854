"""Operators' admin for trunks (with ACLs, credentials and URIs inline), numbers, carriers and
edge nodes."""

import secrets
import urllib.request
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from core.admin import AuditedModelAdmin, admin_caller
from edge.sip.digest import ha1

from . import selectors, services, validators
from .models import (
    Carrier,
    CarrierGateway,
    ConfigRevision,
    EdgeNode,
    IpAclEntry,
    OriginationUri,
    PhoneNumber,
    SipCredential,
    Trunk,
)
from .push import EdgePushError
from .tasks import push_config_to_edge
from .tokens import edge_node_token

# Refusal kinds whose id is a trunk's (edge.config.Refusal).
TRUNK_REFUSALS = frozenset({"trunk", "acl", "origination_uri", "credential"})


class IpAclEntryForm(forms.ModelForm):
    """Staff may give networks broader than the customers' minimum, never another trunk's."""

    class Meta:
        model = IpAclEntry
        fields = ["cidr", "description"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("cidr") and "cidr" not in self.errors:
            try:
                data["cidr"] = selectors.acl_source_check(
                    cidr=data["cidr"], trunk_id=self.instance.trunk_id, staff=True
                )
            except forms.ValidationError as exc:
                self.add_error(None, exc)
        return data


class IpAclEntryInline(admin.TabularInline):
    model = IpAclEntry
    form = IpAclEntryForm
    extra = 0


class SipCredentialForm(forms.ModelForm):
    """Takes a password only to derive the HA1 values; blank generates one, shown once."""

    password = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Blank on a new credential: one is generated and shown once. Blank on an "
        "existing one: unchanged.",
    )

    class Meta:
        model = SipCredential
        fields = ["username", "realm", "password"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["realm"].initial = services.settings.SIP_REALM
        self.generated_password: str | None = None

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        password = data.get("password")
        if not self.instance.pk and not password and data.get("username"):
            password = self.generated_password = secrets.token_urlsafe(
                services.GENERATED_PASSWORD_BYTES
            )
        if password or "username" in self.changed_data or "realm" in self.changed_data:
            if not password:
                raise forms.ValidationError({"password": "Give a password when the name changes."})
            self.instance.ha1_md5 = ha1(data["username"], data["realm"], password, "MD5")
            self.instance.ha1_sha256 = ha1(data["username"], data["realm"], password, "SHA-256")
        return data


class SipCredentialInline(admin.TabularInline):
    model = SipCredential
    form = SipCredentialForm
    extra = 0


class OriginationUriInline(admin.TabularInline):
    model = OriginationUri
    extra = 0


@admin.register(Trunk)
class TrunkAdmin(AuditedModelAdmin):
    list_display = [
        "name",
        "customer",
        "status",
        "max_channels",
        "max_cps",
        "caller_id_policy",
        "registration_allowed",
        "media_mode",
        "srtp",
    ]
    list_filter = [
        "status", "caller_id_policy", "registration_allowed", "media_mode", "srtp", "customer"
    ]  # fmt: skip
    search_fields = ["name", "customer__name"]
    list_select_related = ["customer"]
    autocomplete_fields = ["customer"]
    inlines = [IpAclEntryInline, SipCredentialInline, OriginationUriInline]
    actions = ["suspend", "resume"]
    readonly_fields = ["where_to_send_calls"]

    @admin.display(description="Where the PBX sends calls")
    def where_to_send_calls(self, trunk: Trunk) -> str:
        endpoints = selectors.edge_sip_endpoints()
        sources = selectors.carrier_source_addresses()
        if not endpoints:
            return "No enabled edge node has a SIP address yet."
        return format_html(
            "{}<br>Calls to carriers come from: {}",
            format_html_join(
                mark_safe("<br>"),
                "<code>{}</code> ({} {}:{}, edge {})",
                ((e.uri, e.transport.upper(), e.host, e.port, e.edge) for e in endpoints),
            ),
            ", ".join(sources) or "—",
        )

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        # The edges leave out what they refuse of this trunk: say so where it is fixed.
        latest = ConfigRevision.objects.order_by("-id").first()
        if latest is not None and latest.refusal_count and request.method == "GET":
            for item in latest.refusals:
                if item["kind"] in TRUNK_REFUSALS and str(item["id"]) == object_id:
                    messages.warning(request, f"The edges leave this out: {_refusal_line(item)}")
        return super().change_view(request, object_id, form_url, extra_context)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        super().save_formset(request, form, formset, change)
        for inline_form in formset.forms:
            password = getattr(inline_form, "generated_password", None)
            if password and inline_form.instance.pk:
                messages.warning(
                    request,
                    f"Password for {inline_form.instance}: {password} — shown once, copy it now.",
                )

    @admin.action(description="Suspend selected trunks")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Trunk]) -> None:
        for trunk in queryset:
            services.trunk_suspend(actor=admin_caller(request), trunk=trunk, reason="admin")
        messages.success(request, f"Suspended {queryset.count()} trunk(s).")

    @admin.action(description="Resume selected trunks")
    def resume(self, request: HttpRequest, queryset: QuerySet[Trunk]) -> None:
        for trunk in queryset:
            services.trunk_resume(actor=admin_caller(request), trunk=trunk, reason="admin")
        messages.success(request, f"Resumed {queryset.count()} trunk(s).")


class PhoneNumberForm(forms.ModelForm):
    class Meta:
        model = PhoneNumber
        fields = ["number", "customer", "trunk", "status", "monthly_price", "description"]

    def clean_number(self) -> str:
        return validators.normalize_e164(self.cleaned_data["number"])

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        trunk, customer = data.get("trunk"), data.get("customer")
        if trunk is not None and customer is not None and trunk.customer_id != customer.pk:
            self.add_error("trunk", "The trunk belongs to another customer.")
        return data


@admin.register(PhoneNumber)
class PhoneNumberAdmin(AuditedModelAdmin):
    form = PhoneNumberForm
    list_display = ["number", "customer", "trunk", "status", "monthly_price"]
    list_filter = ["status", "customer"]
    search_fields = ["number", "description", "customer__name"]
    list_select_related = ["customer", "trunk"]
    autocomplete_fields = ["customer", "trunk"]
    show_full_result_count = False


class CarrierGatewayForm(forms.ModelForm):
    class Meta:
        model = CarrierGateway
        fields = [
            "host", "port", "transport", "priority", "weight", "enabled", "prefixes",
            "tech_prefix", "strip_plus",
        ]  # fmt: skip

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("host") and "host" not in self.errors:
            try:
                selectors.gateway_source_check(host=data["host"])
            except forms.ValidationError as exc:
                self.add_error(None, exc)
        return data


class CarrierGatewayInline(admin.TabularInline):
    model = CarrierGateway
    form = CarrierGatewayForm
    extra = 0


@admin.register(Carrier)
class CarrierAdmin(AuditedModelAdmin):
    list_display = ["name", "enabled", "gateway_count"]
    list_filter = ["enabled"]
    search_fields = ["name"]
    inlines = [CarrierGatewayInline]

    @admin.display(description="gateways")
    def gateway_count(self, carrier: Carrier) -> int:
        return carrier.gateways.count()


def _refusal_line(item: dict[str, Any]) -> str:
    return f"{item['kind']} {item['id']}, field {item['field'] or '—'}: {item['reason']}"


def _warn_refusals(request: HttpRequest, revision: ConfigRevision) -> None:
    """A visible warning: edges run this version without some stored rows."""
    first = _refusal_line(revision.refusals[0]) if revision.refusals else ""
    messages.warning(
        request,
        f"Config version {revision.pk} leaves out {revision.refusal_count} object(s) the edges "
        f"refuse; fix or delete them. First: {first}",
    )


@admin.register(EdgeNode)
class EdgeNodeAdmin(AuditedModelAdmin):
    list_display = [
        "name", "enabled", "health", "applied_version", "lag", "last_seen", "last_push_at",
        "short_error",
    ]  # fmt: skip
    list_filter = ["enabled", "health"]
    search_fields = ["name"]
    readonly_fields = [
        "applied_version", "health", "last_seen", "last_push_at", "last_push_error",
        "config_refusals", "cdr_pipeline",
    ]  # fmt: skip
    actions = ["push_now", "rotate_token"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [*super().get_readonly_fields(request, obj), "control_api"]

    @admin.display(description="Control API")
    def control_api(self, node: EdgeNode) -> str:
        if node.pk is None:
            return "—"
        return format_html(
            '<a href="{}">health</a> · <a href="{}">metrics</a> (fetched from {} with the '
            "node's token)",
            reverse("admin:trunking_edgenode_control", args=[node.pk, "health"]),
            reverse("admin:trunking_edgenode_control", args=[node.pk, "metrics"]),
            node.control_url,
        )

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(self.control_view)
        return [
            path("<int:pk>/control/<str:what>/", view, name="trunking_edgenode_control"),
            *super().get_urls(),
        ]

    def control_view(self, request: HttpRequest, pk: int, what: str) -> HttpResponse:
        """What the edge's control API says (GET /health or /metrics), fetched with the node's
        token: the browser cannot present the token, and the API may listen on loopback."""
        node = get_object_or_404(EdgeNode, pk=pk)
        if not self.has_view_permission(request, node) or what not in ("health", "metrics"):
            raise Http404
        url = f"{node.control_url.rstrip('/')}/{what}"
        req = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {edge_node_token(node)}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=3) as answer:
                body = answer.read(2_000_000).decode("utf-8", "replace")
        except (OSError, ValueError) as exc:
            body = f"{url} did not answer: {exc}"
            return HttpResponse(body, content_type="text/plain; charset=utf-8", status=502)
        return HttpResponse(body, content_type="text/plain; charset=utf-8")

    @admin.display(description="CDR pipeline")
    def cdr_pipeline(self, node: EdgeNode) -> str:
        """The edge's CDR shipping (asked of its /metrics, change page only) and what the
        consumer committed for it."""
        from billing.models import CdrIngestProgress
        from billing.selectors import edge_cdr_metrics

        live = ""
        figures = edge_cdr_metrics(node=node) if node.pk is not None else None
        if figures is not None:
            live = (
                f"Edge: {figures.get('journalled', 0):.0f} journalled, "
                f"{figures.get('shipped', 0):.0f} shipped, {figures.get('committed', 0):.0f} "
                f"confirmed committed, lag {figures.get('lag_records', 0):.0f} records / "
                f"{figures.get('lag_seconds', 0):.1f} s. "
            )
        elif node.pk is not None:
            live = "Edge: not answering. "
        progress = CdrIngestProgress.objects.filter(edge=node.name).first()
        if progress is None:
            return live + "Database: no CDR committed yet."
        lag = "—" if progress.last_lag_seconds is None else f"{progress.last_lag_seconds:.1f} s"
        return (
            live
            + "Database: "
            + (
                f"{progress.committed} committed, {progress.duplicates} re-sent duplicates, "
                f"{progress.quarantined} quarantined; last commit {progress.last_committed_at}, "
                f"newest call end {progress.last_call_end_at or '—'}, lag of the last batch {lag}"
            )
        )

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        latest = ConfigRevision.objects.order_by("-id").first()
        self._current_version = latest.pk if latest else None
        if latest is not None and latest.refusal_count:
            _warn_refusals(request, latest)
        extra = {"title": f"Edge nodes — current config version {self._current_version or '—'}"}
        return super().changelist_view(request, {**(extra_context or {}), **extra})

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        node = self.get_object(request, object_id)
        if node is not None and node.applied_version is not None:
            revision = ConfigRevision.objects.filter(pk=node.applied_version).first()
            if revision is not None and revision.refusal_count:
                _warn_refusals(request, revision)
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="left out of its config version")
    def config_refusals(self, node: EdgeNode) -> str:
        revision = ConfigRevision.objects.filter(pk=node.applied_version).first()
        if revision is None or revision.refusal_count is None:
            return "not checked yet"
        if not revision.refusal_count:
            return "nothing"
        lines = [_refusal_line(item) for item in revision.refusals]
        more = revision.refusal_count - len(lines)
        lines += [f"... and {more} more"] if more > 0 else []
        return format_html(
            "<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((ln,) for ln in lines))
        )

    @admin.display(description="lag")
    def lag(self, node: EdgeNode) -> str:
        current = getattr(self, "_current_version", None)
        if current is None or node.applied_version is None:
            return "—"
        return str(max(current - node.applied_version, 0))

    @admin.display(description="last error")
    def short_error(self, node: EdgeNode) -> str:
        return node.last_push_error[:80]

    def save_model(self, request: HttpRequest, obj: EdgeNode, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            messages.warning(
                request, f"Control token for {obj}: {edge_node_token(obj)} — shown once."
            )

    @admin.action(description="Push config now")
    def push_now(self, request: HttpRequest, queryset: QuerySet[EdgeNode]) -> None:
        for node in queryset:
            try:
                push_config_to_edge.delay(node.pk)
            except EdgePushError as exc:
                messages.error(request, str(exc))
        messages.info(request, f"Push queued for {queryset.count()} edge(s).")

    @admin.action(description="Rotate control token (shown once)")
    def rotate_token(self, request: HttpRequest, queryset: QuerySet[EdgeNode]) -> None:
        for node in queryset:
            token = services.edge_node_rotate_token(actor=admin_caller(request), node=node)
            messages.warning(request, f"New token for {node}: {token} — shown once.")
