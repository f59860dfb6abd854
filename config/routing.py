"""WebSocket URL map; each app's consumers are listed here."""

from django.urls import path

from trunking.consumers import LiveBoardConsumer

websocket_urlpatterns: list = [
    path("ws/live/", LiveBoardConsumer.as_asgi(), name="live-board"),
]
