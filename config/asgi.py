"""ASGI entry point: HTTP (admin, API, live pages) and WebSocket routing."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs the app registry)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from config.routing import websocket_urlpatterns  # noqa: E402
from trunking.consumers import KEY_SUBPROTOCOL_PREFIX  # noqa: E402


class OriginCheckUnlessApiKey:
    """Check a WebSocket's Origin against ALLOWED_HOSTS when it rides on the session cookie
    (another site must not open a board with the user's cookie); a connection that presents an
    API key (header or subprotocol: trunking/consumers.py) is a script, often without
    Origin, and proves itself by the key."""

    def __init__(self, app):  # type: ignore[no-untyped-def]
        self.app = app
        self.checked = AllowedHostsOriginValidator(app)

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        keyed = any(
            name == b"authorization" and value[:8].lower() == b"api-key "
            for name, value in scope.get("headers", ())
        ) or any(p.startswith(KEY_SUBPROTOCOL_PREFIX) for p in scope.get("subprotocols", ()))
        return await (self.app if keyed else self.checked)(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": OriginCheckUnlessApiKey(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
