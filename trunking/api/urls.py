"""Routes of the trunking API."""

from rest_framework.routers import BaseRouter

from . import views


def register(router: BaseRouter) -> None:
    router.register("trunks", views.TrunkViewSet)
    router.register("acl-entries", views.IpAclEntryViewSet)
    router.register("credentials", views.SipCredentialViewSet)
    router.register("origination-uris", views.OriginationUriViewSet)
    router.register("numbers", views.PhoneNumberViewSet)
    router.register("carriers", views.CarrierViewSet)
    router.register("carrier-gateways", views.CarrierGatewayViewSet)
    router.register("edge-nodes", views.EdgeNodeViewSet)
    router.register("calls/active", views.ActiveCallViewSet, basename="active-call")
