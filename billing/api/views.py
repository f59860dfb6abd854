"""API views of the billing app: call history, its summary and exports, export jobs.

Every member of a customer (owner, admin, billing, read_only) reads its calls; staff read all.
Exports are reads, so every reader may also run an export job.
"""

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.http import HttpResponseBase
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from core.permissions import TenantPermission
from core.tenancy import Caller, get_caller
from core.viewsets import TenantScopedReadOnlyViewSet

from .. import exports
from ..choices import ExportStatus
from ..filtersets import CdrFilterSet
from ..models import Cdr, ExportJob
from ..selectors import cdr_summary
from .serializers import (
    CdrDetailSerializer,
    CdrSerializer,
    CdrSummarySerializer,
    ExportJobCreateSerializer,
    ExportJobSerializer,
    ExportParamsSerializer,
)


class CdrCursorPagination(CursorPagination):
    """Newest first; a cursor keeps its place while new calls arrive, and no page counts."""

    ordering = ("-setup_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 1000


class _FileRenderer(BaseRenderer):
    """Lets ``?format=csv|jsonl`` through content negotiation; the view streams the body."""

    def render(self, data: Any, accepted_media_type: str | None = None, **kw: Any) -> bytes:
        return b""


class CsvRenderer(_FileRenderer):
    media_type = "text/csv"
    format = "csv"


class JsonLinesRenderer(_FileRenderer):
    media_type = "application/jsonl"
    format = "jsonl"


class CdrViewSet(TenantScopedReadOnlyViewSet):
    """Call history: one record per call attempt, admitted or not, newest first.

    The list, the summary and the export require a period (``since``, ``until``)."""

    queryset = Cdr.objects.all()
    serializer_class = CdrSerializer
    filterset_class = CdrFilterSet
    filter_backends = [DjangoFilterBackend]
    pagination_class = CdrCursorPagination

    def get_queryset(self) -> QuerySet[Cdr]:
        queryset = super().get_queryset()
        if self.action in ("list", "retrieve"):
            queryset = queryset.select_related("trunk")
        return queryset

    def get_serializer_class(self) -> type[serializers.BaseSerializer]:
        return CdrDetailSerializer if self.action == "retrieve" else CdrSerializer

    def filter_queryset(self, queryset: QuerySet[Cdr]) -> QuerySet[Cdr]:
        if self.action == "retrieve":  # an id needs no period
            return queryset
        return super().filter_queryset(queryset)

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        if self.action == "export":  # the body is streamed; errors are JSON
            return (JSONRenderer(), JSONRenderer.media_type)
        return super().perform_content_negotiation(request, force)

    @extend_schema(responses=CdrSummarySerializer)
    @action(detail=False)
    def summary(self, request: Request) -> Response:
        """Attempts, answered, ASR, ACD and minutes for the period, by trunk and by reason."""
        queryset = self.filter_queryset(self.get_queryset())
        figures = cdr_summary(queryset=queryset)
        period = CdrFilterSet(request.query_params).form
        period.is_valid()
        figures |= {"since": period.cleaned_data["since"], "until": period.cleaned_data["until"]}
        return Response(CdrSummarySerializer(figures).data)

    @extend_schema(
        parameters=[ExportParamsSerializer],
        responses={(200, "text/csv"): str, (200, "application/jsonl"): str},
    )
    @action(detail=False, renderer_classes=[JSONRenderer, CsvRenderer, JsonLinesRenderer])
    def export(self, request: Request) -> HttpResponseBase:
        """The filtered calls as CSV or JSON Lines, oldest first, streamed.

        More than ``CDR_EXPORT_JOB_THRESHOLD_ROWS`` rows: 400; run an export job instead."""
        params = ExportParamsSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        queryset = self.filter_queryset(self.get_queryset())
        rows = queryset.count()
        if rows > settings.CDR_EXPORT_JOB_THRESHOLD_ROWS:
            raise ValidationError({"export": [exports.export_too_large_message(rows)]})
        return exports.export_response(
            request._request,
            queryset,
            fmt=params.validated_data["format"],
            columns=params.validated_data["columns"],
        )


class ReadersMayExport(TenantPermission):
    """Starting an export job is a read: every member may, whatever its role."""

    def has_permission(self, request: Any, view: Any) -> bool:
        if request.method == "POST":
            return get_caller(request) is not None
        return super().has_permission(request, view)


class ExportJobViewSet(mixins.CreateModelMixin, TenantScopedReadOnlyViewSet):
    """CDR exports run as jobs: create one, poll its progress, download its file."""

    queryset = ExportJob.objects.all()
    serializer_class = ExportJobSerializer
    permission_classes = [ReadersMayExport]
    filter_backends: list[Any] = []

    @property
    def caller(self) -> Caller:
        caller = get_caller(self.request)
        assert caller is not None
        return caller

    @extend_schema(request=ExportJobCreateSerializer, responses={201: ExportJobSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Queue an export; the body takes the parameters of ``GET /cdrs/export/``."""
        data = request.data if isinstance(request.data, dict) else {}
        params = ExportJobCreateSerializer(data=data)
        params.is_valid(raise_exception=True)
        filters = {
            name: value
            for name, value in data.items()
            if name in CdrFilterSet.base_filters and value not in (None, "")
        }
        try:
            job = exports.cdr_export_job_create(
                actor=self.caller,
                fmt=params.validated_data["format"],
                columns=params.validated_data["columns"],
                filters=filters,
            )
        except DjangoValidationError as exc:
            raise ValidationError(exc.message_dict) from exc
        body = ExportJobSerializer(job, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(responses={(200, "application/octet-stream"): str})
    @action(detail=True)
    def download(self, request: Request, pk: str | None = None) -> HttpResponseBase:
        """The job's file, once it is done and until it expires (410 after)."""
        job = self.get_object()
        if job.status == ExportStatus.EXPIRED:
            return Response({"detail": "This export has expired."}, status=status.HTTP_410_GONE)
        path = exports.export_job_path(job)
        if path is None:
            return Response(
                {"detail": f"This export is {job.status}, not ready."},
                status=status.HTTP_409_CONFLICT,
            )
        return exports.streaming_response(
            request._request,
            exports.file_chunks(path),
            content_type=exports.CONTENT_TYPES[job.format],
            filename=f"cdr-export-{job.pk}.{job.format}",
        )
