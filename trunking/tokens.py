"""Edge node control tokens: derived from SECRET_KEY, so the database never holds them."""

import hashlib
import hmac

from django.conf import settings

from .models import EdgeNode


def edge_node_token(node: EdgeNode) -> str:
    """The node's control-API token: an HMAC of SECRET_KEY, so the database never holds it."""
    message = f"trunkline-edge:{node.pk}:{node.token_generation}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()
