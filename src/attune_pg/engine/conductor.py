"""The pure conductor: (snapshot, events, context) -> commands.

One `Conductor` is built per execution and advance transaction from a `Snapshot`
(the locked execution row and the task states it needs, see plan.py). Events are
fed in (`start`, `attempt_finished`, `items_aggregated`, `control`); the conductor
updates its in-memory copies (run.py) and `flush()` returns the commands, with at
most one write per row. The decisions themselves live in routing.py, fanout.py and
requests.py, which take the conductor as the `Run` they change.

No I/O, no clock, no randomness: the same snapshot and events always give the same
commands (retry jitter is derived from a hash of the task occurrence).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attune_pg import template
from attune_pg.engine import fanout, requests, routing
from attune_pg.engine.run import Run, error_of
from attune_pg.engine.state import Attempt, Context, LiveRows, Snapshot
from attune_pg.errors import ParameterError, TemplateError
from attune_pg.machine import WORKFLOW_FINISHABLE, WorkflowStatus
from attune_pg.redact import redact
from attune_pg.secrets import secret_parameter_key, token_keys
from attune_pg.spec.params import secret_parameters, validate_parameters

Json = Any
W = WorkflowStatus

__all__ = ["Conductor", "error_of"]


class Conductor(Run):
    @classmethod
    def of(cls, snapshot: Snapshot, ctx: Context, **limits: int) -> Conductor:
        """The conductor of one loaded snapshot (what advance.py and the simulator build)."""
        return cls(snapshot.execution, snapshot.states, ctx, live=snapshot.live, **limits)

    def start(self) -> None:
        """A requested execution begins: validate parameters, set vars, run start tasks."""
        self.status = W.RUNNING
        where = f"workflow {self.spec.ref!r}"
        secret = secret_parameters(self.spec.parameters)
        own = {secret_parameter_key(self.execution.id, n): n for n in secret}
        raw = self.execution.parameters
        try:
            tokens = token_keys(raw)
            if tokens - own.keys():
                # Only kv.get_secret (and a secret parameter's own key) may produce a
                # token; a forged one could hand a secret to an action.
                raise ParameterError(f"{where}: parameters may not contain secret tokens")
            # Secret parameters already moved to kv were validated before the move
            # (plan.refuse_secret_parameters); their tokens are only checked to be strings.
            stashed = {own[k] for k in tokens if k in own}
            schema = self.spec.parameters  # the spec's own dict: its validators are cached
            if stashed:
                schema = dict(schema)
                schema["properties"] = {
                    name: {"type": "string"} if name in stashed else prop
                    for name, prop in (schema.get("properties") or {}).items()
                }
            self.parameters = validate_parameters(schema, raw, where=where)
            scope = self.scope() if template.has_templates(self.spec.vars) else {}
            rendered = template.render(self.spec.vars, scope, where=f"{where} vars")
        except (ParameterError, TemplateError) as exc:
            # Bad input ends the execution before any task exists; a secret parameter's
            # value never reaches the error.
            values = [v for n, v in raw.items() if n in secret and isinstance(v, str) and v]
            self.fail_workflow(error_of(type(exc).__name__, redact(str(exc), values)))
            routing.check_complete(self)
            return
        self.vars = dict(rendered) if isinstance(rendered, dict) else {}
        if self.spec.timeout:
            self.timeout_at = self.ctx.now + self.spec.timeout
        for task in self.spec.start_tasks():
            routing.trigger(self, task.name)
        routing.check_complete(self)

    def attempt_finished(self, attempt: Attempt) -> None:
        spec = self.spec.task(attempt.task_name)
        state = self.state(attempt.task_name, attempt.iteration)
        self.attempt = attempt.attempt
        if routing.retry(self, spec, attempt):
            pass
        elif attempt.item_index is None:
            routing.task_done(self, state, attempt.status, attempt.result, attempt.error)
        else:
            fanout.item_done(self, spec, state, attempt)
        # Once per event, never mid-routing: a task that ends while its siblings are
        # still being dispatched must not let the workflow finish under them.
        routing.check_complete(self)
        self.attempt = 1

    def items_aggregated(
        self, task_name: str, iteration: int, results: list[Json], failed_items: list[int]
    ) -> None:
        """All released items of a with-items task finished; `results` is in item order."""
        fanout.items_finished(self, self.state(task_name, iteration), results, failed_items)
        routing.check_complete(self)

    def control(self, live: Mapping[tuple[str, int], LiveRows] | None = None) -> None:
        """Carry out a control request recorded on the execution row (see requests.py).
        `live` (rows a cancel leaves alive) defaults to the snapshot's."""
        if live is not None:
            self.live = live
        if self.status not in WORKFLOW_FINISHABLE:
            return  # ended before its control pass ran: nothing left to do
        if self.status == W.CANCELING:
            requests.cancel(self)
            return
        if self.error is None and self.unhandled_states():
            # retry_execution cleared the error (a failing workflow keeps its error):
            # redrive, even if a pause arrived before this pass ran.
            requests.redrive(self)
        if self.status == W.PAUSING:
            requests.pause(self)
        elif self.status == W.RUNNING:
            routing.check_complete(self)
