"""Stand-in for the string action Attune's simple workflow calls."""

from __future__ import annotations


def transform(text: str, uppercase: bool = False) -> dict[str, str]:
    return {"text": text.upper() if uppercase else text}
