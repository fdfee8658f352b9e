"""Stand-ins for the docker actions Attune's deployment pipeline calls: no side
effects, plausible results built from the inputs."""

from __future__ import annotations

from typing import Any


def check_registry_health(registry: Any = None) -> dict[str, Any]:
    return {"registry": registry, "healthy": True}


def push_image(image: Any = None, tag: Any = None, registry: Any = None) -> dict[str, Any]:
    return {"pushed": f"{registry}/{image}:{tag}"}
