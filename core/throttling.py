"""API rate limit per caller: an API key, a signed-in person, or an address when anonymous.

The rate is ``API_THROTTLE_RATE`` (settings: DEFAULT_THROTTLE_RATES["api"]); a throttled
request answers 429 in the API's error shape with ``Retry-After``.
"""

from typing import Any

from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle


class ApiCallerThrottle(SimpleRateThrottle):
    scope = "api"

    def get_rate(self) -> str | None:
        # Read when used, not at import (DRF's default), so a changed setting takes effect.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request: Any, view: Any) -> str:
        key = getattr(request, "auth", None)
        prefix = getattr(key, "prefix", None)
        if prefix:
            ident = f"key:{prefix}"
        elif getattr(request.user, "is_authenticated", False) and request.user.pk is not None:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"addr:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
