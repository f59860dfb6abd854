"""Reads of the billing app that are more than a filter."""

from __future__ import annotations

import urllib.request

from trunking.models import EdgeNode
from trunking.tokens import edge_node_token

CDR_METRIC_PREFIX = "trunkline_edge_cdr_"
METRICS_TIMEOUT = 1.0


def edge_cdr_metrics(*, node: EdgeNode) -> dict[str, float] | None:
    """The edge's own CDR shipping figures from its ``/metrics`` (journalled, shipped,
    committed, lag in records and seconds, ...), by name without the prefix and ``_total``;
    None if the edge does not answer within a second."""
    request = urllib.request.Request(
        node.control_url.rstrip("/") + "/metrics",
        headers={"Authorization": f"Bearer {edge_node_token(node)}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=METRICS_TIMEOUT) as response:
            text = response.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    figures = {}
    for line in text.splitlines():
        if not line.startswith(CDR_METRIC_PREFIX) or "_created" in line:
            continue
        name, _, value = line.partition(" ")
        try:
            figures[name.removeprefix(CDR_METRIC_PREFIX).removesuffix("_total")] = float(value)
        except ValueError:
            continue
    return figures
