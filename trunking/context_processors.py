"""Template context for the admin: the edges that are failing, for the banner at the top of
every admin page (templates/admin/base_site.html)."""

from typing import Any

from django.http import HttpRequest

from .selectors import failing_edge_nodes


def edge_alerts(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if not request.path.startswith("/admin/") or not getattr(user, "is_staff", False):
        return {}
    return {"failing_edges": list(failing_edge_nodes()[:20])}
