"""Stand-ins for the notifications actions Attune's deployment pipeline calls: no side
effects, plausible results built from the inputs."""

from __future__ import annotations

from typing import Any


def send_multi_channel(channels: Any = None, message: Any = None, metadata: Any = None) -> dict[str, Any]:
    return {"channels": channels, "message": message, "metadata": metadata}
