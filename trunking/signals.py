"""Every committed change to what edges need queues one config push (see trunking.push).

Signals are the one place that sees every write path (API, admin, services, shell); the
receivers only schedule, after commit, saying what changed (a trunk, or a section) so that the
push reads only that again. Bulk writes that bypass signals (``bulk_create``,
``QuerySet.update``) call ``request_config_push`` themselves, without keys: that push reads
everything. (The periodic reconcile compares versions; it reads everything only every few
minutes.)
"""

from typing import Any

from django.db.models.signals import post_delete, post_save, pre_save

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
from .snapshot import change_keys

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


TRUNK_CHILD_MODELS = (IpAclEntry, SipCredential, OriginationUri)


def _saved(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    request_config_push(using=using, keys=change_keys(instance))


def _deleted(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    request_config_push(using=using, keys=change_keys(instance, deleted=True))


def _moving(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    """An ACL entry, credential or URI moved to another trunk changes the one it left too."""
    if instance.pk is None:
        return
    before = sender.objects.using(using).filter(pk=instance.pk).values_list("trunk_id").first()
    if before is not None and before[0] != instance.trunk_id:
        request_config_push(using=using, keys=[f"trunk:{before[0]}"])


def connect() -> None:
    for model in EDGE_RELEVANT_MODELS:
        post_save.connect(_saved, sender=model, dispatch_uid=f"config-push-save-{model.__name__}")
        post_delete.connect(
            _deleted, sender=model, dispatch_uid=f"config-push-delete-{model.__name__}"
        )
    for model in TRUNK_CHILD_MODELS:
        pre_save.connect(_moving, sender=model, dispatch_uid=f"config-push-move-{model.__name__}")
