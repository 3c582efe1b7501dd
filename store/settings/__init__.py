"""The service's configuration: one place where every variable is declared and checked.

The API (`app.settings.Settings` = ApiSettings), the worker (`worker.settings` =
WorkerSettings), the local stack and the store's tools read their settings from the
classes here; the variables they share (store, database, Redis, queue, logs, quality
gate) are declared once, in store.settings.service, and inherited.

- Every variable is `ZEROUNLEARN_<FIELD>` (REDIS_URL and PROMETHEUS_MULTIPROC_DIR keep
  their conventional names), typed and validated, with a one-line description;
  `python -m store.settings` prints the table of all of them.
- An empty variable counts as unset (except a rate limit, where "" means off).
- Secrets (REDIS_URL, ZEROUNLEARN_DATABASE_URL, ZEROUNLEARN_ADMIN_TOKEN,
  ZEROUNLEARN_RECEIPT_KEY, ZEROUNLEARN_CALLBACK_SECRET) may be given as files:
  `X_FILE=/run/secrets/x` reads the value from that file (stripped). Setting both X and
  X_FILE is an error.
- A bad value stops the process at start with a SettingsError: one line per bad
  variable, naming it; secret values are never quoted.

It lives in `store/` because both processes depend on the store already, so it adds no
dependency to either and is packaged with both images; it imports pydantic-settings
only (no torch, FastAPI or RQ).
"""

from store.settings.api import ApiSettings, ConnectionSettings, LocalStackSettings
from store.settings.service import (
    GATE_DEFAULTS,
    GATE_FIELDS,
    GATE_LIMITS,
    BlobSettings,
    DatabaseSettings,
    LoggingSettings,
    ServiceSettings,
)
from store.settings.source import EnvSettings, SecretText, SettingsError
from store.settings.worker import WorkerSettings

__all__ = [
    "GATE_DEFAULTS",
    "GATE_FIELDS",
    "GATE_LIMITS",
    "ApiSettings",
    "BlobSettings",
    "ConnectionSettings",
    "DatabaseSettings",
    "EnvSettings",
    "LocalStackSettings",
    "LoggingSettings",
    "SecretText",
    "ServiceSettings",
    "SettingsError",
    "WorkerSettings",
]
