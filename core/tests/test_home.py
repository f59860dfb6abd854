"""The home page: public links for strangers, the live-board dashboard for the signed in."""

from __future__ import annotations

from django.test import Client

from accounts.choices import Role
from accounts.models import Membership, User


def test_a_stranger_gets_the_links_and_a_sign_in(db):
    page = Client().get("/").content.decode()
    assert 'href="/login/"' in page and 'href="/admin/"' in page
    assert 'id="board"' not in page


def test_staff_get_the_board_with_edges_and_hang_up(client, staff_user):
    client.force_login(staff_user)
    page = client.get("/").content.decode()
    assert 'id="board"' in page and "live/board.js" in page
    assert 'id="edges"' in page and 'id="f-customer"' in page
    assert "canHangUp: true" in page and "all customers" in page
    assert "csrftoken" in client.cookies  # the hang-up button sends it


def test_a_customer_member_gets_its_own_board_and_read_only_cannot_hang_up(client, customer):
    admin = User.objects.create_user("carol", "carol@acme.test", "pw-carol-12345")
    Membership.objects.create(user=admin, customer=customer, role=Role.ADMIN)
    viewer = User.objects.create_user("dave", "dave@acme.test", "pw-dave-123456")
    Membership.objects.create(user=viewer, customer=customer, role=Role.READ_ONLY)

    # Members sign in on /login/ (the admin's sign-in is for staff only).
    response = client.post("/login/", {"username": "carol", "password": "pw-carol-12345"})
    assert response.status_code == 302 and response.url == "/"
    page = client.get("/").content.decode()
    assert "Acme" in page and "canHangUp: true" in page
    assert 'id="edges"' not in page and 'id="f-customer"' not in page  # operators' only

    client.force_login(viewer)
    assert "canHangUp: false" in client.get("/").content.decode()


def test_a_user_of_no_customer_gets_the_public_page(client, db):
    client.force_login(User.objects.create_user("nobody", "n@x.test", "pw-nobody-1234"))
    assert 'id="board"' not in client.get("/").content.decode()
