"""The chaos soak's plan: a seeded mix of workflows of every kind, when each is
submitted, and what each must end with (status, output, task occurrences, the publish
events and join rounds it leaves behind). Pure: the same seed gives the same plan.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


@dataclass
class Planned:
    """One top-level workflow: what to start, when, and what it must end with."""

    index: int
    kind: str
    ref: str
    params: dict[str, Any]
    at: float  # seconds after the load phase starts
    status: str = "succeeded"
    output: dict[str, Any] | None = None  # None: not checked (cancels)
    # (task, iteration, item_index, attempt) -> final status; None: not checked.
    tasks: Tasks | None = None
    answer: dict[str, Any] | None = None  # approvals: the inquiry response
    answer_delay: float = 0.0
    cancel_after: float | None = None  # cancels: seconds after submission
    id: int | None = None
    submitted_at: float | None = None
    canceled_at: float | None = None
    answered: bool = False

    @property
    def key(self) -> str:
        return f"chaos-{self.index}"

    @property
    def publishes(self) -> int:
        return PUBLISHES.get(self.kind, 0)

    @property
    def joins(self) -> int:
        return JOINS.get(self.kind, 0)


REGIONS = ["us-east-1", "eu-west-1", "ap-south-1", "sa-east-1", "eu-north-1", "ap-east-1"]
NAMES = ["ada", "grace", "alan", "edsger", "barbara", "donald", "margaret", "ken"]

# Relative weights of the kinds in the mix (every kind appears at least `MIN_EACH` times).
MIX = {
    "join": 15,
    "items": 14,
    "retry": 10,
    "timeout": 10,
    "nested": 12,
    "approval": 12,
    "cancel": 10,
    "fanout": 17,
}
MIN_EACH = 5

# The publish events each kind leaves. None of these workflows loops, so a second publish
# of one task would mean a transition fired twice.
PUBLISHES = {"join": 3, "fanout": 1, "approval": 1, "timeout": 1}
# The join rounds each kind has (hello_join's summarize, fanout's gather): one each.
JOINS = {"join": 1, "fanout": 1}
# A cancel may stop examples.long_running at any step, but each step runs at most once.
CANCEL_STEPS = ("step1", "step2", "step3")


# A task occurrence: (task, iteration, item_index, attempt) -> its final status.
Occurrence = tuple[str, int, int | None, int]
Tasks = dict[Occurrence, str]


def _one(task: str, status: str = "succeeded") -> Tasks:
    return {(task, 1, None, 1): status}


def _items(task: str, n: int) -> Tasks:
    return {(task, 1, i, 1): "succeeded" for i in range(n)}


def plan_one(index: int, kind: str, rng: random.Random) -> Planned:
    if kind == "join":
        name = f"{rng.choice(NAMES)}{index}"
        shout = rng.random() < 0.5
        greeting = f"Hello, {name}!"
        styled = greeting.upper() if shout else greeting.lower()
        return Planned(
            index,
            kind,
            "examples.hello_join",
            {"name": name, "shout": shout},
            0.0,
            output={"message": f"{styled} ({len(greeting)} letters)", "letters": len(greeting)},
            tasks={
                **_one("greet"),
                **_one("count_letters"),
                **_one("pick_style"),
                **_one("shout" if shout else "whisper"),
                **_one("summarize"),
            },
        )
    if kind == "items":
        regions = rng.sample(REGIONS, rng.randint(2, len(REGIONS)))
        return Planned(
            index,
            kind,
            "examples.with_items",
            {"regions": regions},
            0.0,
            output={
                "greetings": [f"{i}: hello from {r}" for i, r in enumerate(regions)],
                "count": len(regions),
            },
            tasks=_items("greet_regions", len(regions)),
        )
    if kind == "retry":
        succeed_on = rng.choice([2, 3, 3, 3])
        tasks: Tasks = {("call_service", 1, None, a): "failed" for a in range(1, succeed_on)}
        tasks[("call_service", 1, None, succeed_on)] = "succeeded"
        tasks.update(_one("done"))
        return Planned(
            index,
            kind,
            "examples.retry",
            {"succeed_on": succeed_on},
            0.0,
            output={"attempt": succeed_on},
            tasks=tasks,
        )
    if kind == "timeout":
        return Planned(
            index,
            kind,
            "examples.timeout",
            {"seconds": 3},
            0.0,
            output={"used": "fallback"},
            tasks={**_one("slow_primary", "timed_out"), **_one("fallback")},
        )
    if kind == "nested":
        names = [f"{n}{index}" for n in rng.sample(NAMES, rng.randint(1, 3))]
        return Planned(
            index,
            kind,
            "examples.nested",
            {"names": names},
            0.0,
            output={"greetings": [f"hello, {n}" for n in names]},
            tasks=_items("greet_all", len(names)),
        )
    if kind == "approval":
        choice = rng.choice(["yes", "no-reason", "no"])
        tasks = _one("ask")
        if choice == "yes":
            answer: dict[str, Any] = {"approved": True}
            outcome = "approved"
            tasks.update(_one("apply"))
        elif choice == "no":
            answer = {"approved": False, "reason": f"not now {index}"}
            outcome = f"rejected: not now {index}"
        else:
            answer = {"approved": False}
            outcome = "rejected: no reason"
        return Planned(
            index,
            kind,
            "examples.approval",
            {"change": f"change {index}"},
            0.0,
            output={"outcome": outcome},
            tasks=tasks,
            answer=answer,
            answer_delay=rng.uniform(0.0, 2.0),
        )
    if kind == "cancel":
        return Planned(
            index,
            kind,
            "examples.long_running",
            {"seconds": 2},
            0.0,
            status="canceled",
            cancel_after=rng.uniform(0.3, 2.5),
        )
    if kind == "fanout":
        n = rng.randint(2, 5)
        seconds = rng.choice([0.25, 0.5])
        tag = f"f{index}"
        tasks = {
            **_one("start"),
            **_items("items", n),
            **_one("slow"),
            **_one("gather"),
        }
        return Planned(
            index,
            kind,
            "chaos.fanout",
            {"tag": tag, "n": n, "seconds": seconds},
            0.0,
            output={
                "message": f"{tag}: {n} items, slow {seconds * 2}",
                "slept": [seconds] * n,
            },
            tasks=tasks,
        )
    raise ValueError(kind)


def make_plan(count: int, duration: float, rng: random.Random) -> list[Planned]:
    kinds = [k for k in MIX for _ in range(MIN_EACH)]
    weights = list(MIX.values())
    while len(kinds) < count:
        kinds.append(rng.choices(list(MIX), weights)[0])
    rng.shuffle(kinds)
    plan = []
    for index, kind in enumerate(kinds):
        item = plan_one(index, kind, rng)
        item.at = duration * index / max(count, 1)
        plan.append(item)
    return plan
