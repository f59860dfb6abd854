"""WebSocket URL map; each app's consumers are listed here."""

websocket_urlpatterns: list = []
