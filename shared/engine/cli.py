"""Turn the errors a user can cause (bad override, missing path, corrupt checkpoint, NaN loss) into one
clear line on stderr and exit status 2, instead of a long traceback. ``VDP_TRACEBACK=1`` shows it all."""
from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def friendly_errors():
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from shared.engine.checkpoint import CheckpointError
    from shared.engine.run import ConfigError
    from shared.methods.base import NonFiniteLossError

    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    user_errors = (HydraException, OmegaConfBaseException, CheckpointError, ConfigError, NonFiniteLossError,
                   FileNotFoundError)
    try:
        yield
    except user_errors as e:
        if os.environ.get("VDP_TRACEBACK"):
            raise
        cause = e.__cause__ if type(e).__name__ == "InstantiationException" and e.__cause__ else e  # the real error
        msg = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
