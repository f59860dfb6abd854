"""`manage.py add_edge_node NAME --control-url URL`: register an edge node (idempotent).

Prints the node's control token (for an edge started without database access, as
EDGE_CONTROL_TOKEN). An edge started with `manage.py runedge` derives it itself.
"""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from accounts import audit
from accounts.choices import AuditAction
from core.tenancy import SYSTEM
from trunking.models import EdgeNode
from trunking.push import request_config_push
from trunking.tokens import edge_node_token


class Command(BaseCommand):
    help = "Register an edge node (or update its control URL) and print its control token."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--control-url", required=True, help="e.g. http://edge:8081")
        parser.add_argument("--sip-address", action="append", default=[], help="HOST:PORT")

    @transaction.atomic
    def handle(self, *args: Any, name: str, control_url: str, sip_address: list[str],
               **options: Any) -> None:  # fmt: skip
        node = EdgeNode.objects.filter(name=name).first()
        before = audit.snapshot(node) if node else None
        node = node or EdgeNode(name=name)
        node.control_url = control_url
        node.sip_addresses = sip_address or node.sip_addresses
        node.full_clean()
        node.save()
        action = AuditAction.UPDATE if before else AuditAction.CREATE
        audit.record(actor=SYSTEM, obj=node, action=action, before=before)
        request_config_push()
        self.stdout.write(f"edge node {node.name}: control {node.control_url}")
        self.stdout.write(f"control token (keep it secret): {edge_node_token(node)}")
