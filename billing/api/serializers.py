"""Serializers of the billing API: call history (read-only), its summary, export jobs."""

from typing import Any

from django.urls import reverse
from rest_framework import serializers

from ..choices import ExportFormat
from ..exports import parse_columns
from ..models import Cdr, ExportJob

_LIST_FIELDS = [
    "id",
    "setup_at",
    "ringing_at",
    "answer_at",
    "end_at",
    "direction",
    "customer",
    "trunk",
    "trunk_name",
    "caller_e164",
    "callee_e164",
    "caller_raw",
    "callee_raw",
    "final_code",
    "reason",
    "answered",
    "duration_ms",
    "billable_seconds",
    "hangup_side",
    "edge",
    "call_id",
]


class CdrSerializer(serializers.ModelSerializer):
    trunk_name = serializers.CharField(source="trunk.name", default=None, read_only=True)
    answered = serializers.SerializerMethodField()

    class Meta:
        model = Cdr
        fields = _LIST_FIELDS
        read_only_fields = fields

    def get_answered(self, cdr: Cdr) -> bool:
        return cdr.answer_at is not None


class RouteAttemptSerializer(serializers.Serializer):
    target = serializers.CharField()
    kind = serializers.CharField()
    status = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField()


class DecisionTraceSerializer(serializers.Serializer):
    """How the edge decided: every route tried in order, then the outcome."""

    routes = RouteAttemptSerializer(many=True)
    answered_by = serializers.CharField()
    final_code = serializers.IntegerField()
    reason = serializers.CharField()
    hangup_side = serializers.CharField()
    config_version = serializers.IntegerField()


class CdrDetailSerializer(CdrSerializer):
    decision_trace = serializers.SerializerMethodField()

    class Meta(CdrSerializer.Meta):
        fields = [
            *_LIST_FIELDS,
            "a_call_id",
            "b_call_id",
            "source_ip",
            "source_port",
            "codecs",
            "config_version",
            "ingested_at",
            "decision_trace",
        ]
        read_only_fields = fields

    def get_decision_trace(self, cdr: Cdr) -> dict[str, Any]:
        return DecisionTraceSerializer(
            {
                "routes": [
                    {
                        "target": r.get("target", ""),
                        "kind": r.get("kind", ""),
                        "status": r.get("status"),
                        "reason": r.get("reason", ""),
                    }
                    for r in cdr.routes or []
                ],
                "answered_by": cdr.answered_by,
                "final_code": cdr.final_code,
                "reason": cdr.reason,
                "hangup_side": cdr.hangup_side,
                "config_version": cdr.config_version,
            }
        ).data


class _Figures(serializers.Serializer):
    attempts = serializers.IntegerField()
    answered = serializers.IntegerField()
    asr = serializers.DecimalField(max_digits=5, decimal_places=4, allow_null=True)
    acd_seconds = serializers.DecimalField(max_digits=12, decimal_places=2, allow_null=True)
    minutes = serializers.DecimalField(max_digits=16, decimal_places=2)
    billable_minutes = serializers.DecimalField(max_digits=16, decimal_places=2)


class TrunkFiguresSerializer(_Figures):
    trunk = serializers.IntegerField(allow_null=True)
    trunk_name = serializers.CharField(allow_null=True)


class ReasonFiguresSerializer(serializers.Serializer):
    reason = serializers.CharField()
    attempts = serializers.IntegerField()
    answered = serializers.IntegerField()
    share = serializers.DecimalField(max_digits=5, decimal_places=4)


class CdrSummarySerializer(_Figures):
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    by_trunk = TrunkFiguresSerializer(many=True)
    by_reason = ReasonFiguresSerializer(many=True)


class ExportParamsSerializer(serializers.Serializer):
    """``format`` and ``columns`` of an export (the filters are CdrFilterSet's)."""

    format = serializers.ChoiceField(choices=ExportFormat.choices, default=ExportFormat.CSV)
    columns = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="Comma-separated column names, in order; default: the usual ones.",
    )

    def validate_columns(self, value: str) -> list[str]:
        try:
            return parse_columns(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from exc

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs.setdefault("columns", parse_columns(None))
        return attrs


class ExportJobSerializer(serializers.ModelSerializer):
    progress = serializers.FloatField(read_only=True)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = ExportJob
        fields = [
            "id",
            "status",
            "format",
            "columns",
            "filters",
            "rows_total",
            "rows_written",
            "progress",
            "size_bytes",
            "error",
            "created_at",
            "started_at",
            "finished_at",
            "expires_at",
            "download_url",
        ]
        read_only_fields = fields

    def get_download_url(self, job: ExportJob) -> str | None:
        if job.status != "done":
            return None
        path = reverse("cdrexport-download", args=[job.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


class ExportJobCreateSerializer(ExportParamsSerializer):
    """The body of ``POST /cdr-exports/``: format, columns and the CDR filters, flat, as the
    query string of ``GET /cdrs/export/``."""
