"""Settings, read from the environment (django-environ).

With no ``DATABASE_URL`` and no ``REDIS_URL`` the platform runs whole on one machine: SQLite
under ``var/``, the in-memory channel layer and Celery tasks executed in-process. Setting the two
URLs switches to PostgreSQL and Redis without any other change.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("TRUNKLINE_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

env = environ.Env(
    DEBUG=(bool, False),
    ALLOWED_HOSTS=(list, ["127.0.0.1", "localhost"]),
    REDIS_URL=(str, ""),
)
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env("DEBUG")
# A development key is only acceptable when DEBUG is on; production must set SECRET_KEY.
SECRET_KEY = env.str("SECRET_KEY", default="dev-insecure-key-only-for-debug" if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("Set SECRET_KEY (or DEBUG=1 for a development key).")
ALLOWED_HOSTS = env("ALLOWED_HOSTS")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "core",
    "accounts",
    "trunking",
    "billing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "core.middleware.RequestIdMiddleware",
    "core.middleware.ApiErrorMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
CSRF_FAILURE_VIEW = "core.exceptions.csrf_failure"  # JSON under /api/
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "trunking.context_processors.edge_alerts",  # the admin's failing-edge banner
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'trunkline.sqlite3'}")
}
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DATABASES["default"].setdefault("TEST", {})
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the in-process edge and tasks read while the web app writes. IMMEDIATE takes the
    # write lock when a transaction begins, so a writer waits its turn (up to `timeout` s)
    # instead of failing at once with "database is locked" when a read transaction upgrades
    # while another writes (seen under load: the live board's hang-up answered 500).
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns about a missing one before collectstatic
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG

LOGIN_URL = "admin:login"

# Behind a TLS-terminating proxy in production; cookies are secure unless DEBUG.
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
if env.bool("BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Redis: broker, channel layer, cluster counters. Optional. -------------------------------
REDIS_URL = env("REDIS_URL")

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Without a broker, tasks run in-process at the point they are queued (after commit).
CELERY_BROKER_URL = REDIS_URL or "memory://localhost/"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
# Seconds between two checks of prepaid customers' calls in progress (billing.tasks).
PREPAID_CHECK_SECONDS = env.float("PREPAID_CHECK_SECONDS", default=5.0)
CELERY_BEAT_SCHEDULE = {
    # Re-push to edges whose applied version drifted, and mark unreachable ones.
    "reconcile-edges": {
        "task": "trunking.tasks.reconcile_edges",
        "schedule": env.float("EDGE_RECONCILE_SECONDS", default=10.0),
    },
    # Numbers' monthly prices, posted once per number and month (idempotent: runs hourly).
    "recurring-charges": {"task": "billing.tasks.post_recurring_charges", "schedule": 3600.0},
    # Balances checked against the sum of their ledgers; a mismatch is logged as an error.
    "ledger-verify": {"task": "billing.tasks.verify_ledger", "schedule": 3600.0},
    # CDR stream -> PostgreSQL (billing/cdr_stream.py). A round that finds the previous one
    # still running on every worker expires unstarted rather than queueing up.
    "cdr-consume": {
        "task": "billing.tasks.cdr_consume",
        "schedule": env.float("CDR_CONSUME_INTERVAL", default=1.0),
        "options": {"expires": env.float("CDR_CONSUME_INTERVAL", default=1.0)},
    },
    # Prepaid customers' calls in progress against their balance (docs/billing.md "Prepaid
    # calls in progress"): the interval is the worst-case overrun's length.
    "prepaid-calls": {
        "task": "billing.tasks.check_prepaid_calls",
        "schedule": PREPAID_CHECK_SECONDS,
        "options": {"expires": PREPAID_CHECK_SECONDS},
    },
    "cdr-partitions": {
        "task": "billing.tasks.cdr_partitions_ensure",
        "schedule": 3600.0,
    },
}
# --- CDR pipeline (README "CDR pipeline", docs/cdr-pipeline.md) ---------------------------
# The Redis holding the CDR stream and the committed marks; by default the broker's.
CDR_STREAM_REDIS_URL = env.str("CDR_STREAM_REDIS_URL", default="") or REDIS_URL
# A consume round reads for up to this many seconds (it stops early once the stream is dry),
# CDR_CONSUME_ENTRIES stream entries (edge batches) per transaction.
CDR_CONSUME_BUDGET = env.float("CDR_CONSUME_BUDGET", default=5.0)
CDR_CONSUME_ENTRIES = env.int("CDR_CONSUME_ENTRIES", default=50)
# Entries a consumer took and has not acknowledged for this long are claimed by another
# (a worker killed mid-batch).
CDR_CLAIM_IDLE_SECONDS = env.float("CDR_CLAIM_IDLE_SECONDS", default=30.0)
CDR_PARTITION_MONTHS_AHEAD = env.int("CDR_PARTITION_MONTHS_AHEAD", default=3)
# Changes within this window after the first one travel in the same push. 0 queues the push at
# once; changes committed before it starts still travel with it. A push reads only what changed
# (trunking/snapshot.py), so waiting saves little and costs every change that much latency.
CONFIG_PUSH_COALESCE_SECONDS = env.float("CONFIG_PUSH_COALESCE_SECONDS", default=0.0)
# A queued push that never started (worker down) stops blocking new ones after this.
CONFIG_PUSH_PENDING_TTL_MS = 5000

# --- REST API -----------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["core.permissions.TenantPermission"],
    "DEFAULT_FILTER_BACKENDS": [
        # django-filter, strict about parameters, relation choices scoped to the tenant.
        "core.filters.StrictFilterBackend",
        "core.filters.StrictOrderingFilter",
        "rest_framework.filters.SearchFilter",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["core.throttling.ApiCallerThrottle"],
    # Requests per caller (API key, person, or address when anonymous): N/s, N/m, N/h or N/d.
    "DEFAULT_THROTTLE_RATES": {"api": env.str("API_THROTTLE_RATE", default="100/s")},
    "DEFAULT_PAGINATION_CLASS": "core.pagination.StandardPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.exceptions.api_exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Trunkline API",
    "DESCRIPTION": (
        "Provision customers, SIP trunks, numbers and carriers. Authenticate with "
        "`Authorization: Api-Key <key>` (or a browser session)."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Every operation documents its error responses, all in the one Error shape.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.schema.document_errors",
    ],
    "ENUM_NAME_OVERRIDES": {
        "CustomerStatusEnum": "accounts.choices.CustomerStatus",
        "TrunkStatusEnum": "trunking.choices.TrunkStatus",
        "NumberStatusEnum": "trunking.choices.NumberStatus",
    },
}

# --- Edge ---------------------------------------------------------------------------------
# Token the edge presents to fetch its snapshot, and the token the control plane presents to
# the edge's control API. Both must be set in production.
EDGE_CONTROL_TOKEN = env.str("EDGE_CONTROL_TOKEN", default="dev-edge-token" if DEBUG else "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}

# The broadest source network a customer may give a trunk's IP ACL (staff may give broader
# ones): a /8 on a trunk lets anyone in that range call on the customer's account.
ACL_MIN_PREFIX_V4 = env.int("ACL_MIN_PREFIX_V4", default=24)
ACL_MIN_PREFIX_V6 = env.int("ACL_MIN_PREFIX_V6", default=48)

# Digest realm of trunk credentials (HA1 values depend on it: changing it invalidates them).
SIP_REALM = env.str("SIP_REALM", default="trunkline")

# --- Edge node (`manage.py runedge`) ------------------------------------------------------------
# The edge's own settings (EDGE_SIP_ADDRESS, EDGE_CONTROL_ADDRESS, EDGE_NODE_NAME, EDGE_TLS_*,
# EDGE_DIGEST_ALGORITHMS, ...) are read by edge/options.py alone, for runedge, runplatform and
# `python -m edge` alike; the web app needs none of them.

# --- Call history and CDR exports (billing/api, billing/exports.py) ------------------------------
# The longest period one CDR list, summary or export may span (a required since/until range).
CDR_QUERY_MAX_DAYS = env.int("CDR_QUERY_MAX_DAYS", default=93)
# An export of more rows than this is refused by GET .../cdrs/export/ (and the admin's export)
# and runs as a job instead (POST /api/v1/cdr-exports/), whose file is downloaded when ready.
CDR_EXPORT_JOB_THRESHOLD_ROWS = env.int("CDR_EXPORT_JOB_THRESHOLD_ROWS", default=1_000_000)
# Where export jobs write their files, and how long a finished file is kept.
CDR_EXPORT_DIR = Path(env.str("CDR_EXPORT_DIR", default=str(VAR_DIR / "exports")))
CDR_EXPORT_FILE_TTL_HOURS = env.float("CDR_EXPORT_FILE_TTL_HOURS", default=24.0)
# A running export job records its progress (what its page's bar shows) at most this often.
CDR_EXPORT_PROGRESS_SECONDS = env.float("CDR_EXPORT_PROGRESS_SECONDS", default=0.5)
CELERY_BEAT_SCHEDULE["expire-cdr-exports"] = {
    "task": "billing.tasks.expire_cdr_exports",
    "schedule": 600.0,
}
