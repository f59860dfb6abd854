"""Operators' admin for trunks (with ACLs, credentials and URIs inline), numbers, carriers and
edge nodes."""

import secrets
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from core.admin import AuditedModelAdmin, admin_caller
from edge.sip.digest import ha1

from . import services, validators
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


class IpAclEntryInline(admin.TabularInline):
    model = IpAclEntry
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


class CarrierGatewayInline(admin.TabularInline):
    model = CarrierGateway
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
    ]  # fmt: skip
    actions = ["push_now", "rotate_token"]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        latest = ConfigRevision.objects.order_by("-id").first()
        self._current_version = latest.pk if latest else None
        extra = {"title": f"Edge nodes — current config version {self._current_version or '—'}"}
        return super().changelist_view(request, {**(extra_context or {}), **extra})

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
