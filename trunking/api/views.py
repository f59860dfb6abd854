"""API views of the trunking app: each a few lines on the tenant-scoped base."""

import contextlib
from typing import Any

from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.serializers import ReasonSerializer
from accounts.models import Customer
from core.exceptions import error_body
from core.permissions import TenantPermission
from core.schema import ERROR, FORCE_PARAMETER
from core.tenancy import get_caller
from core.viewsets import TenantScopedViewSet

from .. import selectors, services
from ..filtersets import (
    CarrierFilterSet,
    CarrierGatewayFilterSet,
    EdgeNodeFilterSet,
    IpAclEntryFilterSet,
    OriginationUriFilterSet,
    PhoneNumberFilterSet,
    SipCredentialFilterSet,
    TrunkFilterSet,
)
from ..models import (
    Carrier,
    CarrierGateway,
    ConfigRevision,
    EdgeNode,
    IpAclEntry,
    OriginationUri,
    PhoneNumber,
    SipCredential,
    Trunk,
)
from ..push import EdgePushError, request_config_push
from ..tasks import push_config_to_edge
from ..tokens import edge_node_token
from . import serializers as s


class TrunkViewSet(TenantScopedViewSet):
    queryset = Trunk.objects.all()
    serializer_class = s.TrunkSerializer
    filterset_class = TrunkFilterSet
    search_fields = ["name"]
    ordering_fields = ["name", "created_at", "max_channels"]

    def _set_status(self, request: Request, service: Any) -> Response:
        reason = ReasonSerializer(data=request.data)
        reason.is_valid(raise_exception=True)
        trunk = service(actor=self.caller, trunk=self.get_object(), **reason.validated_data)
        return Response(self.get_serializer(trunk).data)

    @extend_schema(parameters=[FORCE_PARAMETER])
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Delete the trunk with its ACL entries, credentials and origination URIs. A trunk that
        still routes numbers answers 409 unless staff add ``?force=true`` (its numbers are then
        unassigned)."""
        return super().destroy(request, *args, **kwargs)

    def perform_destroy(self, instance: Trunk) -> None:
        services.trunk_delete(actor=self.caller, trunk=instance, force=self.force_requested())

    @extend_schema(request=None, responses=s.PhoneNumberSerializer(many=True), filters=False)
    @action(detail=True, methods=["get"], filterset_class=None, ordering_fields=None)
    def numbers(self, request: Request, pk: str | None = None) -> Response:
        """The trunk's numbers (paginated): what the edge routes to this trunk."""
        trunk = self.get_object()
        numbers = self.caller.scope(PhoneNumber.objects.filter(trunk=trunk)).order_by("number")
        context = self.get_serializer_context()
        page = self.paginate_queryset(numbers)
        data = s.PhoneNumberSerializer(page, many=True, context=context).data
        return self.get_paginated_response(data)

    @extend_schema(request=ReasonSerializer, responses=s.TrunkSerializer)
    @action(detail=True, methods=["post"])
    def suspend(self, request: Request, pk: str | None = None) -> Response:
        """Suspend the trunk: new calls are refused; calls in progress finish."""
        return self._set_status(request, services.trunk_suspend)

    @extend_schema(request=ReasonSerializer, responses=s.TrunkSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        return self._set_status(request, services.trunk_resume)


class SourceAddressWrites:
    """Validation and write in one transaction: the source-address check takes a lock that
    keeps two writers from both passing it before either has written (trunking/selectors.py)."""

    @transaction.atomic
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().create(request, *args, **kwargs)  # type: ignore[misc]

    @transaction.atomic
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().update(request, *args, **kwargs)  # type: ignore[misc]


class IpAclEntryViewSet(SourceAddressWrites, TenantScopedViewSet):
    queryset = IpAclEntry.objects.all()
    serializer_class = s.IpAclEntrySerializer
    filterset_class = IpAclEntryFilterSet
    ordering_fields = ["cidr", "created_at"]


class SipCredentialViewSet(TenantScopedViewSet):
    """Digest credentials. The password is write-only and returned once, at creation or reset."""

    queryset = SipCredential.objects.all()
    serializer_class = s.SipCredentialSerializer
    filterset_class = SipCredentialFilterSet
    search_fields = ["username"]
    ordering_fields = ["username", "created_at"]
    # The username is part of the stored HA1, so a credential is replaced, not edited.
    http_method_names = ["get", "post", "delete", "head", "options"]

    @extend_schema(responses={201: s.IssuedCredentialSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        issued = services.credential_create(actor=self.caller, **serializer.validated_data)
        return self._issued(issued, status.HTTP_201_CREATED)

    @extend_schema(request=s.PasswordSerializer, responses=s.IssuedCredentialSerializer)
    @action(detail=True, methods=["post"], url_path="set-password")
    def set_password(self, request: Request, pk: str | None = None) -> Response:
        """Replace the password (generated unless given); returned once."""
        body = s.PasswordSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        issued = services.credential_set_password(
            actor=self.caller, credential=self.get_object(), **body.validated_data
        )
        return self._issued(issued, status.HTTP_200_OK)

    def _issued(self, issued: services.IssuedCredential, code: int) -> Response:
        body = s.IssuedCredentialSerializer(
            issued.credential, context=self.get_serializer_context()
        ).data
        body["password"] = issued.password
        return Response(body, status=code)


class OriginationUriViewSet(TenantScopedViewSet):
    queryset = OriginationUri.objects.all()
    serializer_class = s.OriginationUriSerializer
    filterset_class = OriginationUriFilterSet
    ordering_fields = ["priority", "weight", "created_at"]


class PhoneNumberViewSet(TenantScopedViewSet):
    queryset = PhoneNumber.objects.all()
    serializer_class = s.PhoneNumberSerializer
    filterset_class = PhoneNumberFilterSet
    search_fields = ["number", "description"]
    ordering_fields = ["number", "created_at", "monthly_price"]

    @extend_schema(
        request=s.NumberImportSerializer,
        responses={
            201: s.NumberImportResultSerializer,
            400: OpenApiResponse(ERROR, "Every bad row under `rows`; nothing written."),
        },
    )
    @action(detail=False, methods=["post"], url_path="import")
    def bulk_import(self, request: Request) -> Response:
        """Create many numbers at once, all or nothing; each bad row is reported by index and
        field."""
        body = s.NumberImportSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        customer = self.caller.customer
        if self.caller.is_staff:
            if "customer" not in body.validated_data:
                raise serializers.ValidationError({"customer": ["This field is required."]})
            customer = get_object_or_404(Customer, pk=body.validated_data["customer"])
        try:
            created = services.numbers_import(
                actor=self.caller, customer=customer, rows=body.validated_data["numbers"]
            )
        except services.NumberImportError as exc:
            return _rows_invalid(exc)
        numbers = s.PhoneNumberSerializer(created, many=True, context=self.get_serializer_context())
        return Response(
            {"created": len(created), "numbers": numbers.data}, status=status.HTTP_201_CREATED
        )

    @extend_schema(
        request=s.NumberAssignSerializer,
        responses={
            200: s.NumbersSerializer,
            400: OpenApiResponse(ERROR, "Every bad entry under `rows`; nothing changed."),
        },
    )
    @action(detail=False, methods=["post"])
    def assign(self, request: Request) -> Response:
        """Route a list of the customer's numbers (any spelling) to one trunk, all or nothing;
        each change is audited."""
        body = s.NumberAssignSerializer(data=request.data, context=self.get_serializer_context())
        body.is_valid(raise_exception=True)
        try:
            numbers = services.numbers_assign(actor=self.caller, **body.validated_data)
        except services.NumberImportError as exc:
            return _rows_invalid(exc)
        return self._numbers(numbers)

    @extend_schema(
        request=s.NumberReleaseSerializer,
        responses={
            200: s.NumbersSerializer,
            400: OpenApiResponse(ERROR, "Every bad entry under `rows`; nothing changed."),
        },
    )
    @action(detail=False, methods=["post"])
    def release(self, request: Request) -> Response:
        """Unassign a list of numbers from their trunks, all or nothing (they stay the
        customer's; inbound calls to them are refused until assigned again); audited."""
        body = s.NumberReleaseSerializer(data=request.data, context=self.get_serializer_context())
        body.is_valid(raise_exception=True)
        try:
            numbers = services.numbers_release(
                actor=self.caller, customer=self.caller.customer, **body.validated_data
            )
        except services.NumberImportError as exc:
            return _rows_invalid(exc)
        return self._numbers(numbers)

    def _numbers(self, numbers: list[PhoneNumber]) -> Response:
        context = self.get_serializer_context()
        return Response(
            {"numbers": s.PhoneNumberSerializer(numbers, many=True, context=context).data}
        )


def _rows_invalid(exc: services.NumberImportError) -> Response:
    """The one error shape, with each bad row or entry under ``rows``."""
    count = len({e["index"] for e in exc.errors})
    detail = f"{count} invalid entr{'y' if count == 1 else 'ies'}; nothing was written."
    return Response(error_body(400, detail, rows=exc.errors), status=status.HTTP_400_BAD_REQUEST)


class CarrierViewSet(TenantScopedViewSet):
    staff_only = True
    queryset = Carrier.objects.prefetch_related("gateways")
    serializer_class = s.CarrierSerializer
    filterset_class = CarrierFilterSet
    search_fields = ["name"]
    ordering_fields = ["name"]


class CarrierGatewayViewSet(SourceAddressWrites, TenantScopedViewSet):
    staff_only = True
    queryset = CarrierGateway.objects.select_related("carrier")
    serializer_class = s.CarrierGatewaySerializer
    filterset_class = CarrierGatewayFilterSet
    ordering_fields = ["priority", "weight"]


class EdgeNodeViewSet(TenantScopedViewSet):
    """Edge nodes (staff): applied config version, lag, health and the last push error.

    The control token is returned at creation and on rotation only.
    """

    staff_only = True
    queryset = EdgeNode.objects.all()
    serializer_class = s.EdgeNodeSerializer
    filterset_class = EdgeNodeFilterSet
    ordering_fields = ["name"]

    def get_serializer_context(self) -> dict[str, Any]:
        latest = ConfigRevision.objects.order_by("-id").values_list("id", flat=True).first()
        # What each applied version leaves out, for every edge on the page in one query.
        checked = {
            pk: (refusals, count)
            for pk, refusals, count in ConfigRevision.objects.filter(
                pk__in=EdgeNode.objects.values("applied_version"), refusal_count__isnull=False
            ).values_list("id", "refusals", "refusal_count")
        }
        return {
            **super().get_serializer_context(),
            "config_version": latest,
            "config_refusals": checked,
        }

    def after_write(self, instance: EdgeNode) -> None:
        request_config_push()  # a new or re-enabled edge gets the current config

    @extend_schema(responses={201: s.IssuedEdgeNodeSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().create(request, *args, **kwargs)
        response.data["token"] = edge_node_token(EdgeNode.objects.get(pk=response.data["id"]))
        return response

    @extend_schema(request=None, responses=s.IssuedEdgeNodeSerializer)
    @action(detail=True, methods=["post"], url_path="rotate-token")
    def rotate_token(self, request: Request, pk: str | None = None) -> Response:
        node = self.get_object()
        token = services.edge_node_rotate_token(actor=self.caller, node=node)
        return Response({**self.get_serializer(node).data, "token": token})

    @extend_schema(request=None, responses={202: s.EdgeNodeSerializer})
    @action(detail=True, methods=["post"])
    def push(self, request: Request, pk: str | None = None) -> Response:
        """Push the current config to this edge now (retried with backoff if it fails)."""
        node = self.get_object()
        # In-process (no broker) the push runs here; a failure is recorded on the node.
        with contextlib.suppress(EdgePushError):
            push_config_to_edge.delay(node.pk)
        node.refresh_from_db()
        return Response(self.get_serializer(node).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=s.ConfigVersionSerializer)
    @action(detail=False, methods=["get"], url_path="config-version")
    def config_version(self, request: Request) -> Response:
        """The current config version: what every edge should have applied."""
        latest = ConfigRevision.objects.order_by("-id").first()
        return Response(
            {
                "version": latest.pk if latest else None,
                "content_hash": latest.content_hash if latest else None,
                "created_at": latest.created_at if latest else None,
            }
        )


class _ObjectListSchema(AutoSchema):
    """The active-call list answers one object (count, results, unreachable edges), not the
    array drf-spectacular assumes for a `list` action."""

    def _is_list_view(self, serializer: Any = None) -> bool:
        return False


class ActiveCallViewSet(viewsets.ViewSet):
    """Calls in progress, asked of every edge now (not stored): the live board's data.

    Tenant-scoped like every endpoint: a customer sees and hangs up only its own calls;
    another tenant's call id answers 404. Hanging up needs a write role (owner, admin) or staff.
    """

    permission_classes = [TenantPermission]
    schema = _ObjectListSchema()
    lookup_field = "call_id"
    lookup_value_regex = "[0-9A-Za-z_.:-]+"

    @extend_schema(parameters=[s.ActiveCallFilterSerializer], responses=s.ActiveCallListSerializer)
    def list(self, request: Request) -> Response:
        filters = s.ActiveCallFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        given = filters.validated_data
        found = selectors.active_calls(
            caller=get_caller(request),
            customer_id=given.get("customer"),
            trunk_id=given.get("trunk"),
            edge=given.get("edge"),
            search=given.get("search"),
        )
        unreachable = [
            {"edge": answer.node.name, "error": answer.error}
            for answer in found.edges
            if answer.error is not None
        ]
        if not get_caller(request).is_staff:  # edge errors name internal addresses
            unreachable = [{"edge": row["edge"], "error": "unreachable"} for row in unreachable]
        return Response(
            {"count": len(found.calls), "results": found.calls, "unreachable_edges": unreachable}
        )

    @extend_schema(
        request=None,
        responses={
            204: OpenApiResponse(description="The edge ended the call (BYE/CANCEL sent)."),
            404: OpenApiResponse(ERROR, description="No such call in progress (or not yours)."),
            502: OpenApiResponse(ERROR, description="The edge carrying the call did not answer."),
        },
    )
    def destroy(self, request: Request, call_id: str | None = None) -> Response:
        """Hang up a call in progress: its edge ends both legs and writes its CDR."""
        caller = get_caller(request)
        try:
            services.call_hangup(actor=caller, call_id=str(call_id))
        except services.CallNotFound:
            return Response(error_body(404, "No such call in progress."), status=404)
        except services.EdgeUnavailable:
            detail = "The edge carrying the call did not answer."
            return Response(error_body(502, detail), status=502)
        return Response(status=status.HTTP_204_NO_CONTENT)
