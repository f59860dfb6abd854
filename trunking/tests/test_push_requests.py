"""Changes that matter to edges queue exactly one push per transaction, after commit."""

import pytest
from django.db import transaction

from trunking import push
from trunking.models import EdgeNode, IpAclEntry, PhoneNumber, Trunk

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pushes(monkeypatch) -> list[int]:
    """Counts the pushes that would be queued (the queueing itself is tested end to end)."""
    queued: list[int] = []

    def enqueue() -> None:
        queued.append(1)

    monkeypatch.setattr(push, "_enqueue_push", enqueue)
    return queued


def test_one_push_per_transaction(customer, pushes):
    pushes.clear()
    with transaction.atomic():
        trunk = Trunk.objects.create(customer=customer, name="a")
        IpAclEntry.objects.create(trunk=trunk, cidr="192.0.2.1/32")
        PhoneNumber.objects.create(customer=customer, trunk=trunk, number="+14155550123")
        trunk.delete()
        assert pushes == []  # not before the commit
    assert pushes == [1]


def test_changes_edges_do_not_need_queue_nothing(pushes):
    EdgeNode.objects.create(name="edge-9", control_url="http://127.0.0.1:9")
    assert pushes == []


def test_api_write_and_bulk_import_queue_a_push(api_as, trunk, pushes):
    client = api_as("owner")
    pushes.clear()
    client.patch(f"/api/v1/trunks/{trunk.pk}/", {"max_channels": 3})
    assert pushes == [1]
    client.post("/api/v1/numbers/import/", {"numbers": [{"number": "+14155550111"}]})
    assert pushes == [1, 1]


def test_rolled_back_change_queues_nothing(customer, pushes):
    pushes.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        Trunk.objects.create(customer=customer, name="b")
        raise RuntimeError
    assert pushes == []
