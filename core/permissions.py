"""API permissions: authenticated callers with a tenant (or staff); writes need a write role."""

from typing import Any

from rest_framework import permissions

from .tenancy import get_caller


class TenantPermission(permissions.BasePermission):
    """Default for every endpoint: a known caller; read-only roles may only read."""

    def has_permission(self, request: Any, view: Any) -> bool:
        caller = get_caller(request)
        if caller is None:
            return False
        if getattr(view, "staff_only", False) and not caller.is_staff:
            return False
        return request.method in permissions.SAFE_METHODS or caller.can_write
