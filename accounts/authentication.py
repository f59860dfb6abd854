"""DRF authentication by API key: ``Authorization: Api-Key tk_<prefix>_<secret>``."""

from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework import authentication, exceptions

from . import keys
from .models import ApiKey

# Writing last_used_at on every request would turn each read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiKeyUser:
    """Stands in for ``request.user`` when a script calls with a key: authenticated, no person."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    pk = None

    def __init__(self, key: ApiKey) -> None:
        self.key = key
        self.is_staff = key.customer_id is None
        self.username = f"api-key:{key.prefix}"

    def __str__(self) -> str:
        return self.username


def api_key_for(supplied: str) -> ApiKey | None:
    """The active key whose whole secret is ``supplied`` (noting its use), else None.
    The one check of a presented key: the REST API and the live board's WebSocket call it."""
    supplied = supplied.strip()
    prefix = keys.split_prefix(supplied)
    key = (
        ApiKey.objects.select_related("customer").filter(prefix=prefix).first() if prefix else None
    )
    if key is None or not keys.matches(supplied, key.secret_hash) or not key.is_active:
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Api-Key"

    def authenticate(self, request: Any) -> tuple[ApiKeyUser, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, supplied = header.partition(" ")
        if scheme.lower() != self.keyword.lower():
            return None
        key = api_key_for(supplied)
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        return ApiKeyUser(key), key

    def authenticate_header(self, request: Any) -> str:
        return self.keyword
