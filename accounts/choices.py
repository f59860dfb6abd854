"""Enumerations of the accounts app."""

from django.db import models


class CustomerStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"


class BillingMode(models.TextChoices):
    PREPAID = "prepaid", "Prepaid"
    POSTPAID = "postpaid", "Postpaid"


class Role(models.TextChoices):
    """A member's (or an API key's) rights within its customer."""

    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    BILLING = "billing", "Billing"
    READ_ONLY = "read_only", "Read-only"


# Roles that may change provisioning objects; billing and read-only members only read them.
WRITE_ROLES = frozenset({Role.OWNER, Role.ADMIN})


class AuditAction(models.TextChoices):
    CREATE = "create", "Create"
    UPDATE = "update", "Update"
    DELETE = "delete", "Delete"
    SUSPEND = "suspend", "Suspend"
    RESUME = "resume", "Resume"
    REVOKE = "revoke", "Revoke"
    IMPORT = "import", "Import"
    HANGUP = "hangup", "Hang up"  # a call ended from the live board or the API
