"""Operators' admin for customers, people, API keys and the audit log."""

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from core.admin import AuditedModelAdmin, admin_caller

from . import services
from .models import ApiKey, AuditEntry, Customer, Membership, User


class MembershipInline(admin.StackedInline):
    model = Membership
    extra = 0
    max_num = 1


@admin.register(Customer)
class CustomerAdmin(AuditedModelAdmin):
    list_display = ["name", "status", "billing_mode", "credit_limit", "currency", "created_at"]
    list_filter = ["status", "billing_mode", "currency"]
    search_fields = ["name"]
    actions = ["suspend", "resume"]

    @admin.action(description="Suspend selected customers")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Customer]) -> None:
        for customer in queryset:
            services.customer_suspend(
                actor=admin_caller(request), customer=customer, reason="admin"
            )
        messages.success(request, f"Suspended {queryset.count()} customer(s).")

    @admin.action(description="Resume selected customers")
    def resume(self, request: HttpRequest, queryset: QuerySet[Customer]) -> None:
        for customer in queryset:
            services.customer_resume(actor=admin_caller(request), customer=customer, reason="admin")
        messages.success(request, f"Resumed {queryset.count()} customer(s).")


@admin.register(User)
class UserAdmin(DjangoUserAdmin, AuditedModelAdmin):
    inlines = [MembershipInline]
    list_display = ["username", "email", "is_staff", "customer", "role", "last_login"]
    list_filter = ["is_staff", "is_active", "membership__role"]
    list_select_related = ["membership__customer"]

    @admin.display(ordering="membership__customer__name")
    def customer(self, user: User) -> Any:
        return getattr(getattr(user, "membership", None), "customer", "—")

    @admin.display(ordering="membership__role")
    def role(self, user: User) -> str:
        membership = getattr(user, "membership", None)
        return membership.get_role_display() if membership else "staff" if user.is_staff else "—"


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are issued through the API or `manage.py seed_demo` (the secret is shown once);
    here they can be read and revoked."""

    list_display = [
        "name",
        "prefix",
        "customer",
        "role",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["role", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "customer__name"]
    list_select_related = ["customer"]
    readonly_fields = [
        "customer",
        "name",
        "role",
        "prefix",
        "created_by",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            services.api_key_revoke(actor=admin_caller(request), api_key=key)
        messages.success(request, f"Revoked {queryset.count()} key(s).")


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = [
        "time",
        "action",
        "content_type",
        "object_repr",
        "customer",
        "actor",
        "api_key",
        "request_id",
    ]
    list_filter = ["action", "content_type"]
    search_fields = ["object_repr", "object_id", "request_id", "actor__username"]
    list_select_related = ["content_type", "customer", "actor", "api_key"]
    date_hierarchy = "time"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
