"""REST API v1: one router assembled from each app's routes."""

from rest_framework.routers import DefaultRouter

from accounts.api.urls import register as register_accounts
from billing.api.urls import register as register_billing
from trunking.api.urls import register as register_trunking

router = DefaultRouter()
register_accounts(router)
register_trunking(router)
register_billing(router)

urlpatterns = router.urls
