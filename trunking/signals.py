"""Every committed change to what edges need queues one config push (see trunking.push).

Signals are the one place that sees every write path (API, admin, services, shell); the
receivers only schedule, after commit. Bulk writes that bypass signals (``bulk_create``,
``QuerySet.update``) call ``request_config_push`` themselves, and the periodic reconcile
catches anything else, since the snapshot's version follows its content.
"""

from typing import Any

from django.db.models.signals import post_delete, post_save

from accounts.models import Customer

from .models import (
    Carrier,
    CarrierGateway,
    IpAclEntry,
    OriginationUri,
    PhoneNumber,
    SipCredential,
    Trunk,
)
from .push import request_config_push

EDGE_RELEVANT_MODELS = (
    Customer,
    Trunk,
    IpAclEntry,
    SipCredential,
    OriginationUri,
    PhoneNumber,
    Carrier,
    CarrierGateway,
)


def _changed(sender: Any, using: str, **kwargs: Any) -> None:
    request_config_push(using=using)


def connect() -> None:
    for model in EDGE_RELEVANT_MODELS:
        post_save.connect(_changed, sender=model, dispatch_uid=f"config-push-save-{model.__name__}")
        post_delete.connect(
            _changed, sender=model, dispatch_uid=f"config-push-delete-{model.__name__}"
        )
