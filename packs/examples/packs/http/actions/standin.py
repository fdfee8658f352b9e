"""Stand-ins for the http actions Attune's deployment pipeline calls: no side
effects, plausible results built from the inputs."""

from __future__ import annotations

from typing import Any


def get(url: Any = None, expected_status: Any = None, timeout: Any = None) -> dict[str, Any]:
    return {"url": url, "status": expected_status}
