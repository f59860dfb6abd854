"""Endpoints for edge nodes (not part of the public API): the current config snapshot.

An edge authenticates with ``Authorization: Bearer <token>``: its own node token (with its name
in ``X-Edge-Node``) or the deployment-wide ``EDGE_CONTROL_TOKEN``.
"""

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from edge import snapshot_wire

from .models import EdgeNode
from .snapshot_cache import publish
from .tokens import edge_node_token


def _authenticated_node(request: HttpRequest) -> tuple[bool, EdgeNode | None]:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False, None
    name = request.headers.get("X-Edge-Node", "")
    node = EdgeNode.objects.filter(name=name, enabled=True).first() if name else None
    if node is not None and hmac.compare_digest(token, edge_node_token(node)):
        return True, node
    shared = settings.EDGE_CONTROL_TOKEN
    return bool(shared) and hmac.compare_digest(token, shared), node


@require_GET
def edge_snapshot(request: HttpRequest) -> HttpResponse:
    ok, node = _authenticated_node(request)
    if not ok:
        return JsonResponse({"error": "invalid edge token"}, status=401)
    if node is not None:
        EdgeNode.objects.filter(pk=node.pk).update(last_seen=timezone.now())
    # An edge starting: read everything (a change may await its push), encode once per version.
    return HttpResponse(publish().full, content_type=snapshot_wire.MEDIA_TYPE)
