"""The gunicorn target: `gunicorn -c gunicorn.conf.py wsgi:app`."""

import logging
import os

from app import create_app
from taskservice.errors import ConfigError, DatabaseInUse

# gunicorn stops, rather than restarts, a worker that exits with this code
# while booting: retrying cannot fix a bad setting or a database in use.
WORKER_BOOT_ERROR = 3

try:
    app = create_app()
except (ConfigError, DatabaseInUse) as error:
    logging.getLogger("taskservice").critical("taskservice cannot start: %s", error)
    raise SystemExit(WORKER_BOOT_ERROR) from None
except PermissionError as error:
    logging.getLogger("taskservice").critical(
        "taskservice cannot start: %s; this process runs as uid %d, which must be able to"
        " write the database's directory",
        error,
        os.getuid(),
    )
    raise SystemExit(WORKER_BOOT_ERROR) from None
