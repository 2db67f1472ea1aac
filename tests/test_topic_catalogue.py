"""The topic catalogue matches the code: every catalogued speaker speaks, nobody speaks uncatalogued.

The source (contracts/, libs/, services/, recipes/; never tests) is read as syntax trees. A call in
PUBLISHING or SUBSCRIBING (or a class attribute in SUBSCRIBING_ATTRIBUTES) names its topic by a ``Topic``
constant, a catalogue name written out, or a module constant bound to one of those. Where the call is
decides who speaks: ``services/<name>/`` is ``<name>``, ``libs/sdk/esper/<part>/`` is ``<part>`` (tolaria,
kasmina), another ``libs/<lib>/`` is ``<lib>``. A call whose topic cannot be read this way must be one of
the RELAYS, which pass on topics named elsewhere.

Who may be *planned* (catalogued before the code that speaks exists) is written here, one open issue each:
close the issue and its entries go, so the catalogue cannot promise speakers nobody is building.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from esper_contracts import TOPICS, Topic

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("contracts", "libs", "services", "recipes")
#: The bus itself forwards whatever topic its callers name: it is the transport, not a speaker.
TRANSPORT = ROOT / "libs" / "oona"

Role = Literal["produces", "consumes"]

#: Call name -> (role, position of the topic argument; ``topic=`` works too).
PUBLISHING = {
    "publish": 0, "publish_many": 0, "publish_raw": 0,  # esper_oona.Bus
    "enqueue": 2,  # Urza's outbox: written with the change that caused it, published by its dispatcher
    "Outgoing": 0,  # Tamiyo's controller returns these; its service publishes them
}
SUBSCRIBING = {"subscribe": 0}
#: Class attributes that name the topic a class consumes (the runtime's job services declare their jobs topic).
SUBSCRIBING_ATTRIBUTES = {"jobs_topic"}

#: Calls that pass on a topic named elsewhere (where it is named, it is counted), and why that is fine.
RELAYS = {
    "services/urza/esper_urza/publisher.py::OutboxDispatcher._dispatch_batch":
        "publishes outbox rows; the topic of each was named where it was enqueued",
    "services/tamiyo/esper_tamiyo/service.py::TamiyoService._publish":
        "publishes the controller's Outgoing messages; each names its topic",
    "libs/runtime/esper_runtime/jobs.py::JobWorker.start":
        "subscribes a job service to the topic its subclass names in jobs_topic",
}

#: Services that open issues build; until then the catalogue may list them as planned.
PLANNED_SERVICES = {
    "karn": "#13 Karn: the innovation loop",
    "simic": "#14 Simic: a learned Tamiyo",
    "nissa": "#15 Nissa: metrics, dashboards, alerts",
}
#: Roles that open issues give to services that exist today.
PLANNED_ROLES = {
    # Not owed by an open issue any more: seed health rides in every SystemStatePacket, which Nissa reads; the
    # topic stays reserved until SeedTelemetry names its run (see its catalogue entry).
    (Topic.SEED_HEALTH, "kasmina"): "reserved: per-seed health between boundaries, once SeedTelemetry names a run",
}


@dataclass(frozen=True)
class Use:
    """One call that publishes or subscribes a topic."""

    topic: str
    role: Role
    speaker: str
    where: str  # path:line


@dataclass(frozen=True)
class Relay:
    """A publishing or subscribing call whose topic is not named at the call."""

    site: str  # path::Class.function
    where: str


def speaker_of(path: Path) -> str:
    """Who speaks from ``path`` (relative to the repository root)."""
    parts = path.parts
    if parts[0] == "services":
        return parts[1]
    if parts[:3] == ("libs", "sdk", "esper") and len(parts) > 4:
        return parts[3]
    if parts[0] == "libs":
        return parts[1]
    return parts[0]


class _Scanner(ast.NodeVisitor):
    """Collects the Uses and Relays of one module."""

    def __init__(self, path: Path, tree: ast.Module) -> None:
        self.path = path
        self.speaker = speaker_of(path)
        self.scope: list[str] = []
        self.uses: list[Use] = []
        self.relays: list[Relay] = []
        # Module constants, so ``JOBS = Topic.COMPILATION_JOBS`` then ``subscribe(JOBS, ...)`` is read too.
        self.constants: dict[str, ast.expr] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self.constants[node.targets[0].id] = node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                self.constants[node.target.id] = node.value

    def _scoped(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _scoped

    def topic(self, node: ast.expr, seen: frozenset[str] = frozenset()) -> str | None:
        """The topic ``node`` names, or None when it is not named here."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value  # an unknown name is kept, so the test reports it
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Topic":
            return getattr(Topic, node.attr, f"Topic.{node.attr} (no such constant)")
        if isinstance(node, ast.Name) and node.id in self.constants and node.id not in seen:
            return self.topic(self.constants[node.id], seen | {node.id})
        return None

    def visit_Assign(self, node: ast.Assign) -> None:
        declared = [t for t in node.targets if isinstance(t, ast.Name) and t.id in SUBSCRIBING_ATTRIBUTES]
        if declared and self.scope:
            topic = self.topic(node.value)
            if topic is None:
                self.relays.append(Relay(f"{self.path}::{'.'.join(self.scope)}", f"{self.path}:{node.lineno}"))
            else:
                self.uses.append(Use(topic, "consumes", self.speaker, f"{self.path}:{node.lineno}"))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        role: Role | None = "produces" if name in PUBLISHING else "consumes" if name in SUBSCRIBING else None
        if name is not None and role is not None:
            position = PUBLISHING.get(name, SUBSCRIBING.get(name, 0))
            argument = next((k.value for k in node.keywords if k.arg == "topic"), None)
            if argument is None and len(node.args) > position:
                argument = node.args[position]
            where = f"{self.path}:{node.lineno}"
            topic = self.topic(argument) if argument is not None else None
            if topic is None:
                self.relays.append(Relay(f"{self.path}::{'.'.join(self.scope)}", where))
            else:
                self.uses.append(Use(topic, role, self.speaker, where))
        self.generic_visit(node)


def scan(path: Path, source: str) -> tuple[list[Use], list[Relay]]:
    """The Uses and Relays in one module's ``source``; ``path`` is relative to the repository root."""
    tree = ast.parse(source, filename=str(path))
    scanner = _Scanner(path, tree)
    scanner.visit(tree)
    return scanner.uses, scanner.relays


def source_files() -> Iterator[Path]:
    """Every Python file of the product: no tests, no benchmarks, not the transport."""
    for top in SOURCE_DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if "tests" in rel.parts or path.is_relative_to(TRANSPORT) or ".venv" in rel.parts:
                continue
            yield rel


def scan_tree() -> tuple[list[Use], list[Relay]]:
    """The Uses and Relays of the whole source."""
    uses: list[Use] = []
    relays: list[Relay] = []
    for rel in source_files():
        found, passed_on = scan(rel, (ROOT / rel).read_text())
        uses += found
        relays += passed_on
    return uses, relays


def speakers(uses: Iterable[Use]) -> dict[tuple[str, Role], dict[str, list[str]]]:
    """(topic, role) -> speaker -> where."""
    table: dict[tuple[str, Role], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for use in uses:
        table[use.topic, use.role][use.speaker].append(use.where)
    return table


def catalogued(topic: str, role: Role) -> tuple[str, ...]:
    """Who the catalogue says produces (or consumes) ``topic``."""
    spec = TOPICS[topic]
    return spec.producers if role == "produces" else spec.consumers


def silent_speakers(uses: Iterable[Use]) -> list[str]:
    """Catalogued producers and consumers, not planned, that nothing in ``uses`` shows speaking."""
    table = speakers(uses)
    return [f"{topic}: {who} {role} nothing in code"
            for topic, spec in TOPICS.items() for role in ("produces", "consumes")
            for who in catalogued(topic, role) if who not in spec.planned and who not in table[topic, role]]


def uncatalogued_speakers(uses: Iterable[Use]) -> list[str]:
    """Uses the catalogue does not list: an unknown topic, or a speaker not (or only planned) in its entry."""
    wrong = []
    for (topic, role), found in speakers(uses).items():
        for who, where in found.items():
            if topic not in TOPICS:
                wrong.append(f"{topic!r} is not in the catalogue, yet {who} {role} it at {', '.join(where)}")
            elif who not in catalogued(topic, role):
                wrong.append(f"{topic}: {who} {role} it at {', '.join(where)} but the catalogue does not say so")
            elif who in TOPICS[topic].planned:
                wrong.append(f"{topic}: {who} {role} it at {', '.join(where)}: it is no longer planned")
    return wrong


USES, FOUND_RELAYS = scan_tree()


# ------------------------------------------------------------------------------------------ the catalogue


def test_the_topic_constants_are_the_catalogue() -> None:
    constants = {value for name, value in vars(Topic).items() if name.isupper()}
    assert constants == set(TOPICS)


def test_every_catalogued_speaker_really_speaks() -> None:
    missing = silent_speakers(USES)
    assert not missing, "catalogued but silent (mark planned only what an open issue builds):\n" + "\n".join(missing)


def test_nobody_speaks_on_a_topic_without_being_catalogued() -> None:
    wrong = uncatalogued_speakers(USES)
    assert not wrong, "\n".join(wrong)


def test_only_what_open_issues_build_is_planned() -> None:
    wrong = [f"{topic}: {who} is planned, but no open issue builds it"
             for topic, spec in TOPICS.items() for who in spec.planned
             if who not in PLANNED_SERVICES and (topic, who) not in PLANNED_ROLES]
    assert not wrong, "\n".join(wrong)


def test_every_planned_role_is_still_in_the_catalogue() -> None:
    stale = [f"{topic}: {who} ({issue})" for (topic, who), issue in PLANNED_ROLES.items()
             if who not in TOPICS[topic].planned]
    assert not stale, "planned roles the catalogue no longer has (remove them here):\n" + "\n".join(stale)


def test_every_topic_has_a_producer_and_a_consumer() -> None:
    for topic, spec in TOPICS.items():
        assert spec.producers and spec.consumers, topic
        real = [who for who in spec.producers + spec.consumers if who not in spec.planned]
        if not real:  # nothing speaks yet: the whole topic waits for open issues
            assert all(who in PLANNED_SERVICES or (topic, who) in PLANNED_ROLES for who in spec.planned), topic


def test_topics_are_named_only_where_they_are_relayed() -> None:
    assert {relay.site for relay in FOUND_RELAYS} == set(RELAYS), (
        "a publish or subscribe whose topic is not named at the call: name it with a Topic constant, "
        "or add the call to RELAYS with the reason:\n" + "\n".join(f"{r.site} ({r.where})" for r in FOUND_RELAYS))


def test_kasmina_takes_its_commands_in_process() -> None:
    # Commands travel inside the AdaptationSignal and Kasmina applies them in the trainer: no topic of their own.
    assert "control.kasmina.commands" not in TOPICS
    assert not [u for u in USES if u.topic == "control.kasmina.commands"]


# ------------------------------------------------------------------------------------------ the scanner itself


SAMPLE = '''
from esper_contracts import Topic

JOBS = Topic.COMPILATION_JOBS
RESULTS: str = "compilation.results"


class Worker:
    jobs_topic = Topic.VALIDATION_JOBS

    def start(self, bus, outbox, conn, topic):
        bus.subscribe(JOBS, "w", self.handle)
        bus.publish(RESULTS, result)
        bus.publish_many(topic=Topic.FIELD_REPORTS, payloads=[])
        outbox.enqueue(conn, "key", Topic.VALIDATION_JOBS, job)
        out = [Outgoing(Topic.PROPOSALS, p, "k")]
        bus.publish("control.kasmina.commands", command)
        bus.subscribe(Topic.NO_SUCH_TOPIC, "w", self.handle)
        bus.publish(topic, payload)
'''


def test_the_scanner_reads_every_way_a_topic_is_named() -> None:
    uses, relays = scan(Path("services/tezzeret/esper_tezzeret/worker.py"), SAMPLE)
    assert [(u.topic, u.role) for u in uses] == [
        ("validation.jobs", "consumes"),
        ("compilation.jobs", "consumes"),
        ("compilation.results", "produces"),
        ("innovation.field_reports", "produces"),
        ("validation.jobs", "produces"),
        ("control.proposals", "produces"),
        ("control.kasmina.commands", "produces"),
        ("Topic.NO_SUCH_TOPIC (no such constant)", "consumes"),
    ]
    assert {u.speaker for u in uses} == {"tezzeret"}
    assert [r.site for r in relays] == ["services/tezzeret/esper_tezzeret/worker.py::Worker.start"]


@pytest.mark.parametrize(("path", "speaker"), [
    ("services/narset-worker/esper_narset_worker/host.py", "narset-worker"),
    ("libs/sdk/esper/tolaria/trainer.py", "tolaria"),
    ("libs/sdk/esper/kasmina/layer.py", "kasmina"),
    ("libs/sdk/esper/standalone.py", "sdk"),
    ("libs/runtime/esper_runtime/service.py", "runtime"),
    ("contracts/esper_contracts/topics.py", "contracts"),
])
def test_code_is_attributed_to_its_service_or_library(path: str, speaker: str) -> None:
    assert speaker_of(Path(path)) == speaker


def test_the_checks_report_a_stranger_and_a_silent_speaker() -> None:
    stranger, _ = scan(Path("services/karn/esper_karn/service.py"),
                       "def go(bus):\n    bus.subscribe(Topic.COMPILATION_JOBS, 'karn', print)\n")
    assert uncatalogued_speakers(stranger) == [
        "compilation.jobs: karn consumes it at services/karn/esper_karn/service.py:2 but the catalogue does not say so"]
    planned, _ = scan(Path("services/simic/esper_simic/service.py"),
                      "def go(bus):\n    bus.subscribe(Topic.FIELD_REPORTS, 'simic', print)\n")
    assert uncatalogued_speakers(planned) == [
        "innovation.field_reports: simic consumes it at services/simic/esper_simic/service.py:2: "
        "it is no longer planned"]
    without_urza = [u for u in USES if u.speaker != "urza"]
    assert "compilation.jobs: urza produces nothing in code" in silent_speakers(without_urza)
    assert "compilation.results: urza consumes nothing in code" in silent_speakers(without_urza)
