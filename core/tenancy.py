"""Who is calling: staff, or a customer with a role. Resolved once per request."""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accounts.models import ApiKey, Customer, User


@dataclass(frozen=True)
class Caller:
    """The identity every service and audit row is given.

    ``customer`` is None for staff (operators), who see every tenant.
    """

    user: "User | None"
    api_key: "ApiKey | None"
    customer: "Customer | None"
    role: str | None
    is_staff: bool

    @property
    def can_write(self) -> bool:
        from accounts.choices import WRITE_ROLES

        return self.is_staff or self.role in WRITE_ROLES

    def scope(self, queryset: Any) -> Any:
        """Restrict ``queryset`` to this caller's tenant (staff: unrestricted)."""
        if self.is_staff:
            return queryset
        if self.customer is None:
            return queryset.none()
        lookup = queryset.model.tenant_lookup
        return queryset.filter(**{lookup: self.customer.pk})


SYSTEM = Caller(user=None, api_key=None, customer=None, role=None, is_staff=True)


def caller_for_user(user: "User") -> Caller | None:
    """The caller for a logged-in person, or None if they belong nowhere."""
    if not user.is_authenticated or not user.is_active:
        return None
    if user.is_staff:
        return Caller(user=user, api_key=None, customer=None, role=None, is_staff=True)
    membership = getattr(user, "membership", None)
    if membership is None:
        return None
    return Caller(
        user=user,
        api_key=None,
        customer=membership.customer,
        role=membership.role,
        is_staff=False,
    )


def caller_for_api_key(key: "ApiKey") -> Caller:
    return Caller(
        user=None,
        api_key=key,
        customer=key.customer,
        role=key.role,
        is_staff=key.customer_id is None,
    )


def get_caller(request: Any) -> Caller | None:
    """The caller of a DRF or Django request, cached on it."""
    cached = getattr(request, "_trunkline_caller", False)
    if cached is not False:
        return cached
    key = getattr(request, "auth", None)
    from accounts.models import ApiKey

    caller = caller_for_api_key(key) if isinstance(key, ApiKey) else caller_for_user(request.user)
    request._trunkline_caller = caller
    return caller
