"""Tenants (customers), their members and API keys, and the audit log."""

from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.contrib.contenttypes.models import ContentType
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from trunking.validators import validate_region

from .choices import AuditAction, BillingMode, CustomerStatus, Role

currency_validator = RegexValidator(r"^[A-Z]{3}$", "Use an ISO 4217 code such as USD or EUR.")


class Customer(models.Model):
    """The tenant: every provisioning object belongs to exactly one customer."""

    name = models.CharField(max_length=200, unique=True)
    status = models.CharField(
        max_length=16, choices=CustomerStatus.choices, default=CustomerStatus.ACTIVE
    )
    billing_mode = models.CharField(
        max_length=16, choices=BillingMode.choices, default=BillingMode.PREPAID
    )
    credit_limit = models.DecimalField(
        max_digits=14,
        decimal_places=4,
        default=Decimal("0"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text="Postpaid customers may spend up to this amount; ignored for prepaid.",
    )
    currency = models.CharField(max_length=3, default="USD", validators=[currency_validator])
    default_country = models.CharField(
        max_length=2,
        blank=True,
        validators=[validate_region],
        help_text="ISO country of numbers written without +country code (when no trunk says).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    tenant_lookup = "pk"

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(credit_limit__gte=0), name="customer_credit_limit_non_negative"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status == CustomerStatus.ACTIVE


class User(AbstractUser):
    """A person: staff (operators) or a member of one customer."""

    tenant_lookup = "membership__customer"
    audit_exclude = frozenset({"password", "last_login"})


class Membership(models.Model):
    """A user's place in one customer, with a role."""

    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="membership")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.READ_ONLY)
    created_at = models.DateTimeField(auto_now_add=True)

    tenant_lookup = "customer"

    class Meta:
        ordering = ["customer__name", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} @ {self.customer} ({self.role})"


class ApiKey(models.Model):
    """A secret for scripts. Only a SHA-256 digest is stored; the key is shown once.

    A key without a customer is an operator key and acts with staff rights.
    """

    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, related_name="api_keys", null=True, blank=True
    )
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.ADMIN)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    # SHA-256 is right here (not a slow password hash): keys carry 256 bits of randomness.
    secret_hash = models.CharField(max_length=64, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    tenant_lookup = "customer"
    audit_exclude = frozenset({"secret_hash", "last_used_at"})

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class AuditEntry(models.Model):
    """One change to a provisioning object, written in the transaction that made it.

    ``customer`` and the object are kept by id without a database constraint so that the
    history outlives the objects it describes.
    """

    time = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    customer = models.ForeignKey(
        Customer,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    content_type = models.ForeignKey(ContentType, on_delete=models.PROTECT, related_name="+")
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    action = models.CharField(max_length=16, choices=AuditAction.choices)
    changes = models.JSONField(default=dict, help_text="{field: [before, after]}")
    request_id = models.CharField(max_length=64, blank=True)
    note = models.CharField(max_length=500, blank=True)

    tenant_lookup = "customer"

    class Meta:
        ordering = ["-time", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [
            models.Index(fields=["content_type", "object_id"], name="audit_object_idx"),
            models.Index(fields=["customer", "-time"], name="audit_customer_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.content_type.model} {self.object_repr}"
