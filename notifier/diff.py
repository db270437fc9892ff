"""Records in, changes and events out: normalisation, keyed diff and rules.

Everything here is pure: no I/O, no clock (the caller passes ``now``).

Normalised records keep the fields a query selected, minus the watch's
ignored paths. Ignored paths are dotted (``ticket.updated_at``) and pass
through lists, so ``tickets.units`` drops ``units`` from every ticket.
A nested list whose items are all objects with distinct ``id`` values is a
*keyed list*: it is sorted by id, so that a reorder is not a change, and
its items are matched by id when two records are compared.

Changed paths name fields with dots and keyed-list items with their id in
brackets: ``status``, ``club.name``, ``tickets[T1].title``; a keyed-list
item added or removed is one change at ``tickets[T3]`` whose other side is
null. Other lists are compared as whole values. Paths assume that field
names hold no dots or brackets, which GraphQL names cannot.

Values are compared with Python equality, so ``1`` and ``1.0`` (one JSON
number written two ways) are no change; nor, by the same rule, are ``1``
and ``true``, which a GraphQL field, having one type, never swaps. A
record whose hash moved without any value changing gives no update.
"""

from __future__ import annotations

import copy
import hashlib
import json
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from notifier.errors import MalformedResponseError
from notifier.model import (
    JSON,
    Change,
    Event,
    FieldChange,
    Rule,
    SnapshotRecord,
    Watch,
    canonical_json,
)


@dataclass(frozen=True)
class _Ignore:
    """Ignored paths at one level: names to drop, and subtrees by name."""

    drop: frozenset[str]
    children: dict[str, _Ignore]


@lru_cache(maxsize=256)
def _ignore_tree(ignore: tuple[str, ...]) -> _Ignore | None:
    if not ignore:
        return None
    drop = frozenset(path for path in ignore if "." not in path)
    nested: dict[str, list[str]] = {}
    for path in ignore:
        head, dot, rest = path.partition(".")
        if dot and head not in drop:
            nested.setdefault(head, []).append(rest)
    children = {name: _ignore_tree(tuple(rests)) for name, rests in nested.items()}
    return _Ignore(
        drop=drop,
        children={name: tree for name, tree in children.items() if tree is not None},
    )


def _item_id(item: JSON) -> str:
    return str(item["id"])


def _is_keyed(items: Sequence[JSON]) -> bool:
    """Whether ``items`` is a non-empty list of objects with distinct ids."""
    if not items:
        return False
    seen: set[str] = set()
    for item in items:
        if type(item) is not dict:
            return False
        ident = item.get("id")
        if ident is None or type(ident) in (bool, dict, list):
            return False
        seen.add(str(ident))
    return len(seen) == len(items)


def _normalise(value: JSON, tree: _Ignore | None) -> JSON:
    """Normalise ``value``, returning the same object when nothing changes.

    Returning the input untouched (rather than a copy) is what keeps a
    100,000-record poll cheap: most records need no change at all.
    """
    kind = type(value)
    if kind is dict:
        return _normalise_dict(value, tree)
    if kind is list:
        return _normalise_list(value, tree)
    return value


def _normalise_dict(value: dict[str, JSON], tree: _Ignore | None) -> JSON:
    out = value
    children = None
    if tree is not None:
        children = tree.children
        if not tree.drop.isdisjoint(value):
            out = dict(value)
            for name in tree.drop:
                out.pop(name, None)
    for name, item in out.items():
        kind = type(item)
        if kind is dict or kind is list:
            fixed = _normalise(item, children.get(name) if children else None)
            if fixed is not item:
                if out is value:
                    out = dict(value)
                out[name] = fixed
    return out


def _normalise_list(value: list[JSON], tree: _Ignore | None) -> JSON:
    out = value
    for index, item in enumerate(value):
        kind = type(item)
        if kind is dict or kind is list:
            fixed = _normalise(item, tree)
            if fixed is not item:
                if out is value:
                    out = list(value)
                out[index] = fixed
    if _is_keyed(out):
        ordered = sorted(out, key=_item_id)
        if ordered != out:
            return ordered
    return out


def normalise(record: JSON, ignore: Iterable[str] = ()) -> JSON:
    """``record`` without ignored paths and with keyed lists in id order.

    The result shares unchanged parts with ``record`` (or is ``record``
    itself), so neither may be mutated afterwards.
    """
    return _normalise(record, _ignore_tree(tuple(ignore)))


# The encoder of ``model.canonical_json``, built once: ``json.dumps`` with
# options builds a new encoder per call, a tenth of a large poll's hashing.
_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False
).encode


def record_hash(normalised: JSON) -> str:
    """The sha256 hex digest of a normalised record's canonical JSON."""
    return _text_hash(_canonical(normalised))


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def record_key(record: JSON, key: str) -> str:
    """The value at dotted path ``key`` of a record, as text.

    :raises MalformedResponseError: when the record has no usable key there.
    """
    value = record.get(key) if type(record) is dict else None
    if value is None and "." in key:
        value = record
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    if type(value) is str:
        return value
    if value is None or isinstance(value, bool | dict | list):
        raise MalformedResponseError(
            f"a record has no usable key at {key!r} (found {value!r}); "
            "select that field in the query or set the watch's key"
        )
    return str(value)


def snapshot_records(
    records: Iterable[JSON],
    *,
    key: str,
    ignore: Iterable[str] = (),
    previous: Mapping[str, SnapshotRecord] | None = None,
) -> dict[str, SnapshotRecord]:
    """Normalise and hash fetched records, by key; a later duplicate wins.

    A record equal to its entry in ``previous`` reuses that entry and its
    hash: comparing decoded values costs a fraction of serialising and
    hashing them, and most records of a poll are unchanged.

    :raises MalformedResponseError: when an item is not an object or has no key.
    """
    tree = _ignore_tree(tuple(ignore))
    known = previous if previous is not None else {}
    out: dict[str, SnapshotRecord] = {}
    for record in records:
        if type(record) is not dict:
            raise MalformedResponseError(
                f"a record is {type(record).__name__}, not an object"
            )
        ident = record_key(record, key)
        normalised = _normalise_dict(record, tree)
        old = known.get(ident)
        if old is not None and old.record == normalised:
            out[ident] = old
            continue
        text = _canonical(normalised)
        out[ident] = SnapshotRecord(hash=_text_hash(text), record=normalised, text=text)
    return out


# Field-level comparison


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _keyed_or_empty(value: JSON) -> bool:
    return isinstance(value, list) and (not value or _is_keyed(value))


def _compare(path: str, before: JSON, after: JSON, out: list[FieldChange]) -> None:
    if before == after:
        return
    if isinstance(before, dict) and isinstance(after, dict):
        if before.keys() != after.keys() and path:
            out.append(FieldChange(path=path, before=before, after=after))
            return
        for name in sorted(before.keys() | after.keys()):
            _compare(_join(path, name), before.get(name), after.get(name), out)
        return
    if _keyed_or_empty(before) and _keyed_or_empty(after):
        old = {_item_id(item): item for item in before}
        new = {_item_id(item): item for item in after}
        for ident in sorted(old.keys() | new.keys()):
            _compare(f"{path}[{ident}]", old.get(ident), new.get(ident), out)
        return
    out.append(FieldChange(path=path, before=before, after=after))


def field_changes(before: JSON, after: JSON) -> tuple[FieldChange, ...]:
    """The changed paths between two normalised records, in path order."""
    out: list[FieldChange] = []
    _compare("", before, after, out)
    return tuple(out)


def diff(
    old: Mapping[str, SnapshotRecord],
    new: Mapping[str, SnapshotRecord],
    *,
    single: bool = False,
) -> list[Change]:
    """The changes that turn snapshot ``old`` into ``new``.

    Creations come in the order of ``new``, then updates, then deletions in
    the order of ``old``. With ``single`` (a watch of one object) the one
    old and one new record are compared whatever their keys, so only
    updates come out.
    """
    if single:
        return _diff_single(old, new)
    created: list[Change] = []
    updated: list[Change] = []
    for key, item in new.items():
        before = old.get(key)
        if before is None:
            created.append(
                Change(kind="created", key=key, record=item.record, previous=None)
            )
        elif before.hash != item.hash:
            change = _updated(key, before.record, item.record)
            if change.changes:
                updated.append(change)
    deleted = [
        Change(kind="deleted", key=key, record=None, previous=item.record)
        for key, item in old.items()
        if key not in new
    ]
    return created + updated + deleted


def _updated(key: str, before: JSON, after: JSON) -> Change:
    return Change(
        kind="updated",
        key=key,
        record=after,
        previous=before,
        changes=field_changes(before, after),
    )


def _diff_single(
    old: Mapping[str, SnapshotRecord], new: Mapping[str, SnapshotRecord]
) -> list[Change]:
    if not old or not new:
        return []
    before = next(iter(old.values()))
    key, after = next(iter(new.items()))
    if before.hash == after.hash:
        return []
    change = _updated(key, before.record, after.record)
    return [change] if change.changes else []


# Applying changes (the inverse of the diff, used to check it)

_SEGMENT = re.compile(r"([^.\[\]]+)|\[([^\]]*)\]")


def _segments(path: str) -> list[tuple[str, bool]]:
    """``tickets[T1].title`` -> [("tickets", False), ("T1", True), ("title", False)]."""
    return [(name or ident, not name) for name, ident in _SEGMENT.findall(path)]


def _child(container: JSON, segment: tuple[str, bool]) -> JSON:
    name, by_id = segment
    if by_id:
        return next((i for i in container if _item_id(i) == name), None)
    return container.get(name) if isinstance(container, dict) else None


def _patch(record: JSON, change: FieldChange) -> None:
    *parents, (name, by_id) = _segments(change.path)
    node = record
    for segment in parents:
        node = _child(node, segment)
    if not by_id:
        node[name] = copy.deepcopy(change.after)
        return
    index = next((i for i, item in enumerate(node) if _item_id(item) == name), None)
    if index is not None:
        del node[index]
    if change.after is not None:
        node.append(copy.deepcopy(change.after))
        node.sort(key=_item_id)


def apply_changes(
    records: Mapping[str, JSON], changes: Iterable[Change]
) -> dict[str, JSON]:
    """The records of ``records`` with ``changes`` applied, updates path by path."""
    out = {key: copy.deepcopy(value) for key, value in records.items()}
    for change in changes:
        if change.kind == "deleted":
            out.pop(change.key, None)
        elif change.kind == "created":
            out[change.key] = copy.deepcopy(change.record)
        else:
            for field_change in change.changes:
                _patch(out[change.key], field_change)
    return out


def lookup(record: JSON, path: str) -> JSON:
    """The value at a changed-path style ``path`` of a record, or None."""
    node = record
    for segment in _segments(path):
        if node is None:
            return None
        if segment[1] and not isinstance(node, list):
            return None
        node = _child(node, segment)
    return node


# Rules

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_CONDITION = re.compile(
    r"^\s*(?P<path>[A-Za-z_][\w.\[\]-]*)\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    r"(?P<number>[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)\s*$"
)


@dataclass(frozen=True, kw_only=True)
class Condition:
    """A threshold ``path op number`` of a rule's ``when``."""

    path: str
    op: str
    number: float

    def holds(self, record: JSON) -> bool:
        """Whether the record's value at ``path`` is a number passing the test."""
        if record is None:
            return False
        value = lookup(record, self.path)
        if not isinstance(value, int | float):
            return False
        return _OPERATORS[self.op](float(value), self.number)


@lru_cache(maxsize=256)
def parse_condition(text: str) -> Condition:
    """Parse a rule's ``when`` text (``waitlist_size >= 50``).

    :raises ValueError: naming the text and the expected form.
    """
    match = _CONDITION.match(text)
    if match is None:
        raise ValueError(
            f"cannot read the condition {text!r}: expected 'path op number' "
            "with op one of > >= < <= == != (e.g. 'waitlist_size >= 50')"
        )
    return Condition(path=match["path"], op=match["op"], number=float(match["number"]))


def _strip_ids(path: str) -> str:
    return re.sub(r"\[[^\]]*\]", "", path)


def _field_changed(fields: Sequence[str], change: Change) -> bool:
    if change.kind != "updated":
        # A whole record appearing or vanishing changes every field.
        return True
    for field_change in change.changes:
        path = _strip_ids(field_change.path)
        for name in fields:
            if (
                path == name
                or path.startswith(name + ".")
                or name.startswith(path + ".")
            ):
                return True
    return False


def rule_matches(rule: Rule, change: Change) -> bool:
    """Whether ``change`` passes ``rule``: kind, changed fields and edge condition.

    ``fields`` narrows updates only; a creation or deletion passes it. A
    ``when`` condition fires on the edge: false on the previous record (a
    creation has none, so false) and true on the new one (a deletion has
    none, so it never fires).
    """
    if rule.kinds and change.kind not in rule.kinds:
        return False
    if rule.fields and not _field_changed(rule.fields, change):
        return False
    if rule.when is not None:
        condition = parse_condition(rule.when)
        return not condition.holds(change.previous) and condition.holds(change.record)
    return True


def apply_rules(
    watch: Watch, changes: Sequence[Change]
) -> list[tuple[Change, tuple[str, ...]]]:
    """The changes that become events, each with the channels it goes to.

    Without rules every change goes to the watch's channels. With rules a
    change goes to the union of the channels of every rule it passes (a
    rule without channels means the watch's), and a change that passes no
    rule is dropped.
    """
    if not watch.rules:
        return [(change, watch.channels) for change in changes]
    routed: list[tuple[Change, tuple[str, ...]]] = []
    for change in changes:
        channels: dict[str, None] = {}
        matched = False
        for rule in watch.rules:
            if rule_matches(rule, change):
                matched = True
                channels.update(dict.fromkeys(rule.channels or watch.channels))
        if matched:
            routed.append((change, tuple(channels)))
    return routed


# Events


def event_id(watch_id: str, generation: int, key: str | None, kind: str) -> str:
    """A stable event id: the same (watch, generation, key, kind) gives the same id.

    ``generation`` is the snapshot generation the poll diffed against, so a
    change re-derived after a crash keeps its id while a record that goes
    A to B, back to A and to B again gives a new id each time.
    """
    digest = hashlib.sha256(
        canonical_json([watch_id, generation, key, kind]).encode()
    ).hexdigest()
    return "evt_" + digest[:32]


def build_event(watch: Watch, change: Change, generation: int, now: datetime) -> Event:
    """The event of ``change``, typed ``<entity>.<kind>``, diffed at ``generation``."""
    return Event(
        id=event_id(watch.id, generation, change.key, change.kind),
        type=f"{watch.entity}.{change.kind}",
        occurred_at=now,
        project=watch.project,
        watch=watch.name,
        key=change.key,
        record=change.record,
        previous=change.previous,
        changes=change.changes,
    )
