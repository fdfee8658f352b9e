"""Stand-ins for the ci actions Attune's deployment pipeline calls: no side
effects, plausible results built from the inputs."""

from __future__ import annotations

from typing import Any


def build_and_test(app_name: Any = None, version: Any = None, registry: Any = None, run_tests: Any = None) -> dict[str, Any]:
    return {"image_name": app_name, "image_uri": f"{registry}/{app_name}:{version}", "tests_passed": bool(run_tests)}
