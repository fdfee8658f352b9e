"""One error tree for attune_pg.

Every message names where the problem is (file and line, field, row id), so a
user reading one line knows what to fix. The CLI maps each class to an exit code.
"""

from __future__ import annotations


class AttuneError(Exception):
    """Base of every error attune_pg raises on purpose."""

    exit_code = 1


class SpecError(AttuneError):
    """A workflow, action or pack file is invalid.

    `file`, `line` and `field` locate the problem; str() gives the one-line form
    ``path:line: field: message``.
    """

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        elif self.line:
            where = f"line {self.line}: "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"

    def located(self, file: str) -> SpecError:
        """The same error, attributed to `file` if it had no file yet."""
        if self.file:
            return self
        return SpecError(self.message, file=file, line=self.line, field=self.field)


class InUseError(SpecError):
    """A pack, action or workflow cannot go away while registered workflows call it."""

    exit_code = 4


class SkippedInvalid(SpecError):
    """Some files were invalid and skipped; the valid ones were registered."""

    exit_code = 3


class TemplateError(AttuneError):
    """A Jinja expression failed to parse or evaluate (names the expression)."""

    exit_code = 3


class ParameterError(AttuneError):
    """Workflow or action parameters do not match their schema (names the parameter)."""

    exit_code = 2


class ActionError(AttuneError):
    """An action could not be resolved or loaded (not a failure of the action itself)."""


class StaleWrite(AttuneError):
    """A guarded write matched no row: another actor got there first, so the transaction
    rolls back (the advance retries it one execution at a time)."""


class StateError(AttuneError):
    """An illegal state transition was requested."""

    exit_code = 4


class NotFoundError(AttuneError):
    """A referenced row (execution, workflow, inquiry) does not exist."""

    exit_code = 4


class DatabaseUnavailable(AttuneError):
    """No PostgreSQL server could be reached or started."""

    exit_code = 5


class ServiceError(AttuneError):
    """A service of the worker's own (the metrics endpoint) could not start."""
