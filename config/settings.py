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
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
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
    # WAL lets the in-process edge and tasks read while the web app writes.
    DATABASES["default"]["OPTIONS"] = {"init_command": "PRAGMA journal_mode=WAL;"}

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
CELERY_BEAT_SCHEDULE = {
    # Re-push to edges whose applied version drifted, and mark unreachable ones.
    "reconcile-edges": {
        "task": "trunking.tasks.reconcile_edges",
        "schedule": env.float("EDGE_RECONCILE_SECONDS", default=10.0),
    },
}
# Changes within this window after the first one travel in the same push.
CONFIG_PUSH_COALESCE_SECONDS = env.float("CONFIG_PUSH_COALESCE_SECONDS", default=0.05)
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
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
        "rest_framework.filters.SearchFilter",
    ],
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
# The CDR journal (edge/runtime/journal.py, in EDGE_JOURNAL_DIR) is fsynced in batches: a crash
# loses at most the unflushed batch, fewer than EDGE_CDR_BATCH_SIZE records or
# EDGE_CDR_FLUSH_INTERVAL seconds' worth. Smaller values lose less and cost more fsyncs.
EDGE_CDR_BATCH_SIZE = env.int("EDGE_CDR_BATCH_SIZE", default=64)
EDGE_CDR_FLUSH_INTERVAL = env.float("EDGE_CDR_FLUSH_INTERVAL", default=0.05)
# A standalone edge runs no automatic full garbage collection, one every this many seconds
# instead (0: never); see edge/runtime/gc_policy.py for why.
EDGE_GC_FULL_INTERVAL = env.float("EDGE_GC_FULL_INTERVAL", default=3600.0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}

# Digest realm of trunk credentials (HA1 values depend on it: changing it invalidates them).
SIP_REALM = env.str("SIP_REALM", default="trunkline")

# --- Edge node (`manage.py runedge`) ------------------------------------------------------------
# Defaults of the runedge command; its EDGE_* options and environment variables (EDGE_SIP,
# EDGE_CONTROL, EDGE_TLS_CERT, ... see edge/runtime/main.py) override them.
EDGE_NODE_NAME = env.str("EDGE_NODE_NAME", default="")  # empty: the machine's hostname
EDGE_SIP_ADDRESS = env.str("EDGE_SIP_ADDRESS", default="127.0.0.1:5060")  # UDP and TCP
EDGE_TLS_ADDRESS = env.str("EDGE_TLS_ADDRESS", default="")  # empty: SIP host, port 5061
# rtpengine ng addresses for media anchoring ("udp:127.0.0.1:22222,udp:10.0.0.2:22222"); empty:
# none, and trunks in media mode "auto" pass SDP through (docs/media.md).
EDGE_RTPENGINE = env.str("EDGE_RTPENGINE", default="")
EDGE_TLS_CERT = env.str("EDGE_TLS_CERT", default="")  # TLS is on when cert and key are set
EDGE_TLS_KEY = env.str("EDGE_TLS_KEY", default="")
EDGE_CONTROL_ADDRESS = env.str("EDGE_CONTROL_ADDRESS", default="127.0.0.1:8081")
EDGE_JOURNAL_DIR = Path(env.str("EDGE_JOURNAL_DIR", default=str(VAR_DIR / "cdr")))
