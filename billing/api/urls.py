"""Routes of the billing API."""

from rest_framework.routers import BaseRouter

from . import views


def register(router: BaseRouter) -> None:
    router.register("cdrs", views.CdrViewSet)
    router.register("cdr-exports", views.ExportJobViewSet, basename="cdrexport")
    router.register("rate-decks", views.RateDeckViewSet)
    router.register("rates", views.RateViewSet)
    router.register("rate-assignments", views.RateAssignmentViewSet)
    router.register("ledger-entries", views.LedgerEntryViewSet)
    router.register("balances", views.BalanceViewSet, basename="balance")
    router.register("invoices", views.InvoiceViewSet)
