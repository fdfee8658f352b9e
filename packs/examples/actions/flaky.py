"""An action that fails on its first attempts: the engine passes the attempt number
in ATTUNE_ATTEMPT, so retries are observable without any shared state."""

from __future__ import annotations

import os


def flaky(succeed_on: int = 3) -> dict[str, int]:
    attempt = int(os.environ["ATTUNE_ATTEMPT"])
    if attempt < succeed_on:
        raise ConnectionError(f"attempt {attempt}: the service is not ready yet")
    return {"attempt": attempt}
