"""The checks and error shapes that both sides of a python host share: stdlib only (json, re),
because `python_host` imports this module at every host's start-up (`outcome` re-exports it
for everyone else).

Every result must be JSON (strict: no NaN/Infinity, no NUL characters, which PostgreSQL
`jsonb` refuses) and its JSON text must fit in `MAX_RESULT_BYTES`.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # as typing's, which costs an import at every host's start-up
if TYPE_CHECKING:
    from typing import Any

#: The largest result (its JSON text, UTF-8) an action may return.
MAX_RESULT_BYTES = 1024 * 1024

#: Longest `error["message"]`; longer messages are cut with an ellipsis.
MAX_MESSAGE_CHARS = 2000

_MB = 1024 * 1024
# A JSON escape of U+0000 that is not itself an escaped backslash followed by "u0000".
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def clean_text(text: str) -> str:
    """`text` without what PostgreSQL text/jsonb refuses (NUL, lone surrogates)."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\ufffd")


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line (line breaks become spaces), at most `limit` characters."""
    flat = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return clean_text(flat)


def make_error(type_: str, message: str, **detail: Any) -> dict[str, Any]:
    """An error dict: one-line `message`, plus the non-empty `detail` entries."""
    error: dict[str, Any] = {"type": type_, "message": one_line(message) or type_}
    for key, value in detail.items():
        if value not in (None, "", [], {}):
            error[key] = clean_text(value) if isinstance(value, str) else value
    return error


def size_text(nbytes: int) -> str:
    """`nbytes` in MB with one decimal ("2.3 MB")."""
    return f"{nbytes / _MB:.1f} MB"


def limit_text() -> str:
    return f"{MAX_RESULT_BYTES / _MB:g} MB"


def text_problem(text: str) -> tuple[str, str] | None:
    """Why the JSON text of a result cannot be stored; None if it can."""
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        return (
            "ResultNotJSON",
            "result is not JSON: it contains a NUL character (\\u0000), "
            "which PostgreSQL jsonb cannot store",
        )
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            return "ResultNotJSON", "result is not JSON: it contains a lone surrogate character"
    if size > MAX_RESULT_BYTES:
        return "ResultTooLarge", f"result is {size_text(size)}, over the {limit_text()} limit"
    return None
