"""Normalisation, keyed diff, rules and event ids (pure, no I/O)."""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier import diff
from notifier.errors import MalformedResponseError
from notifier.model import (
    Change,
    FieldChange,
    Project,
    Rule,
    SnapshotRecord,
    Watch,
    canonical_json,
)

PROJECT = Project(id="AB12", name="Spring Run")
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def make_watch(**fields: Any) -> Watch:
    """A registrations watch with overridable fields."""
    values: dict[str, Any] = {
        "project": PROJECT,
        "name": "registrations",
        "entity": "registration",
        "query": "query { x }",
        "records": "project.registrations.data",
        "channels": ("team",),
    }
    values.update(fields)
    return Watch(**values)


def snap(*records: dict[str, Any], ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """Normalised snapshot records keyed by id."""
    return diff.snapshot_records(records, key="id", ignore=ignore)


def paths(change: Change) -> list[str]:
    """The changed paths of one change."""
    return [field_change.path for field_change in change.changes]


def test_normalise_drops_ignored_paths_through_lists() -> None:
    """Ignored dotted paths are dropped, also inside every item of a list."""
    record = {
        "id": "1",
        "updated_at": "x",
        "ticket": {"id": "T", "cached": 3},
        "tickets": [{"id": "B", "units": 1}, {"id": "A", "units": 2}],
    }

    out = diff.normalise(record, ["updated_at", "ticket.cached", "tickets.units"])

    assert out == {
        "id": "1",
        "ticket": {"id": "T"},
        "tickets": [{"id": "A"}, {"id": "B"}],
    }
    assert record["updated_at"] == "x"
    assert record["tickets"][0] == {"id": "B", "units": 1}


def test_normalise_sorts_keyed_lists_only() -> None:
    """Lists of objects with distinct ids go in id order; other lists keep theirs."""
    record = {
        "keyed": [{"id": "b"}, {"id": "a"}],
        "plain": [3, 1, 2],
        "dupes": [{"id": "b"}, {"id": "b", "x": 1}, {"id": "a"}],
    }

    out = diff.normalise(record)

    assert out["keyed"] == [{"id": "a"}, {"id": "b"}]
    assert out["plain"] == [3, 1, 2]
    assert out["dupes"] == record["dupes"]


def test_reorder_of_a_keyed_list_is_no_change() -> None:
    """Two records differing only in the order of a keyed list hash the same."""
    one = diff.normalise({"id": 1, "tickets": [{"id": "A"}, {"id": "B"}]})
    two = diff.normalise({"id": 1, "tickets": [{"id": "B"}, {"id": "A"}]})

    assert diff.record_hash(one) == diff.record_hash(two)


def test_hash_is_the_sha256_of_canonical_json() -> None:
    """The record hash is sha256 over ``model.canonical_json``, non-ASCII included."""
    record = {"b": [1, 2.5, None], "a": {"name": "Zoë", "ok": True}}

    digest = hashlib.sha256(canonical_json(record).encode()).hexdigest()

    assert diff.record_hash(record) == digest


def test_hash_is_stable_across_key_order() -> None:
    """The hash depends on content, not on the order of an object's keys."""
    assert diff.record_hash({"a": 1, "b": 2}) == diff.record_hash({"b": 2, "a": 1})
    assert diff.record_hash({"a": 1}) != diff.record_hash({"a": 2})


@pytest.mark.parametrize(
    ("record", "key", "expected"),
    [
        ({"id": "X1"}, "id", "X1"),
        ({"id": 7}, "id", "7"),
        ({"ticket": {"code": "T9"}}, "ticket.code", "T9"),
    ],
    ids=["text", "number", "dotted"],
)
def test_record_key(record: dict[str, Any], key: str, expected: str) -> None:
    """A record's key is the value at the watch's key path, as text."""
    assert diff.record_key(record, key) == expected


@pytest.mark.parametrize(
    "record",
    [{"name": "no id"}, {"id": None}, {"id": {"a": 1}}],
    ids=["absent", "null", "object"],
)
def test_record_without_key_is_malformed(record: dict[str, Any]) -> None:
    """A record with no usable key makes the poll fail instead of guessing."""
    with pytest.raises(MalformedResponseError, match="'id'"):
        diff.snapshot_records([record], key="id")


def test_snapshot_records_reuses_unchanged_entries() -> None:
    """An unchanged record keeps its previous entry; a changed one gets a new hash."""
    old = snap({"id": "1", "s": "a"}, {"id": "2", "s": "a"})

    new = diff.snapshot_records(
        [{"id": "1", "s": "a"}, {"id": "2", "s": "b"}], key="id", previous=old
    )

    assert new["1"] is old["1"]
    assert new["2"].hash != old["2"].hash


def test_diff_created_updated_deleted() -> None:
    """A keyed diff finds creations, field-level updates and deletions by key."""
    old = snap(
        {"id": "1", "name": "Ann", "status": "pending", "club": {"name": "Runners"}},
        {"id": "2", "name": "Bob", "status": "confirmed", "club": None},
        {"id": "3", "name": "Cid", "status": "confirmed", "club": None},
    )
    new = snap(
        {"id": "4", "name": "Dee", "status": "pending", "club": None},
        {"id": "2", "name": "Bob", "status": "cancelled", "club": None},
        {
            "id": "1",
            "name": "Ann",
            "status": "confirmed",
            "club": {"name": "Runners CC"},
        },
    )

    changes = diff.diff(old, new)

    assert [(c.kind, c.key) for c in changes] == [
        ("created", "4"),
        ("updated", "2"),
        ("updated", "1"),
        ("deleted", "3"),
    ]
    assert changes[2].changes == (
        FieldChange(path="club.name", before="Runners", after="Runners CC"),
        FieldChange(path="status", before="pending", after="confirmed"),
    )
    assert changes[0].previous is None
    assert changes[3].record is None
    assert changes[3].previous["name"] == "Cid"


def test_keyed_list_items_are_addressed_by_id() -> None:
    """Items of a nested keyed list are matched by id and named ``list[id]``."""
    old = snap(
        {
            "id": "E",
            "tickets": [{"id": "A", "title": "5k"}, {"id": "B", "title": "10k"}],
        }
    )
    new = snap(
        {
            "id": "E",
            "tickets": [{"id": "C", "title": "HM"}, {"id": "A", "title": "5 km"}],
        }
    )

    (change,) = diff.diff(old, new)

    assert change.changes == (
        FieldChange(path="tickets[A].title", before="5k", after="5 km"),
        FieldChange(path="tickets[B]", before={"id": "B", "title": "10k"}, after=None),
        FieldChange(path="tickets[C]", before=None, after={"id": "C", "title": "HM"}),
    )


def test_object_appearing_is_one_change() -> None:
    """A nested object going from null to a value is one change at its path."""
    (change,) = diff.diff(
        snap({"id": "1", "club": None}), snap({"id": "1", "club": {"n": 1}})
    )

    assert change.changes == (FieldChange(path="club", before=None, after={"n": 1}),)


def test_single_watch_gives_updates_only() -> None:
    """A single-object watch compares its one record whatever the keys."""
    old = snap({"id": "E1", "waitlist_size": 3})
    new = snap({"id": "E1", "waitlist_size": 5})

    assert [c.kind for c in diff.diff(old, new, single=True)] == ["updated"]
    assert diff.diff(old, {}, single=True) == []
    assert diff.diff({}, new, single=True) == []
    assert diff.diff(old, old, single=True) == []


def test_same_number_written_twice_is_no_change() -> None:
    """``1`` and ``1.0`` are one JSON number: no update although the text moved."""
    old = snap({"id": "1", "amount": 1})
    new = snap({"id": "1", "amount": 1.0})

    assert old["1"].hash != new["1"].hash
    assert diff.diff(old, new) == []


def test_ignored_fields_make_no_change() -> None:
    """A change in an ignored path alone yields no change."""
    old = snap({"id": "1", "seen": 1, "s": "a"}, ignore=("seen",))
    new = snap({"id": "1", "seen": 2, "s": "a"}, ignore=("seen",))

    assert diff.diff(old, new) == []


# Property: the diff, applied field by field, turns the old snapshot into the new.

_ids = st.sampled_from(["a", "b", "c", "d"])
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["x", "y", ""])
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["p", "q", "r"]), inner, max_size=3),
        st.lists(
            st.fixed_dictionaries({"id": _ids, "v": inner}),
            max_size=4,
            unique_by=lambda item: item["id"],
        ),
    ),
    max_leaves=8,
)
_records = st.fixed_dictionaries({"name": _values, "tickets": _values, "n": _scalars})
_snapshots = st.dictionaries(
    st.sampled_from(["1", "2", "3", "4", "5"]), _records, max_size=5
)


def _as_snapshot(records: dict[str, dict[str, Any]]) -> dict[str, SnapshotRecord]:
    return diff.snapshot_records(
        [{"id": key, **value} for key, value in records.items()], key="id"
    )


@settings(max_examples=300, deadline=None)
@given(old=_snapshots, new=_snapshots)
def test_applying_the_diff_yields_the_new_snapshot(
    old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]
) -> None:
    """Applying the changes path by path to the old records gives the new ones."""
    before = _as_snapshot(old)
    after = _as_snapshot(new)

    changes = diff.diff(before, after)
    applied = diff.apply_changes({k: v.record for k, v in before.items()}, changes)

    assert applied == {k: v.record for k, v in after.items()}


# Rules


def updated(previous: dict[str, Any], record: dict[str, Any]) -> Change:
    """An update change between two records."""
    return Change(
        kind="updated",
        key="E1",
        record=record,
        previous=previous,
        changes=diff.field_changes(previous, record),
    )


@pytest.mark.parametrize(
    ("when", "before", "after", "fires"),
    [
        ("waitlist_size >= 50", 49, 50, True),
        ("waitlist_size >= 50", 50, 51, False),
        ("waitlist_size >= 50", 51, 40, False),
        ("count > 0", 0, 1, True),
        ("count > 0", None, 1, True),
        ("count > 0", 1, None, False),
        ("count < 10", 10, 9.5, True),
        ("count <= 10", 11, 10, True),
        ("count == 3", 2, 3, True),
        ("count != 3", 3, 4, True),
        ("count != 3", 4, 5, False),
        ("count > 0", "0", "1", False),
    ],
    ids=[
        "ge-cross",
        "ge-hold",
        "ge-leave",
        "gt-cross",
        "gt-from-null",
        "gt-to-null",
        "lt-float",
        "le",
        "eq",
        "ne-cross",
        "ne-hold",
        "text-is-not-a-number",
    ],
)
def test_threshold_fires_on_the_edge(
    when: str, before: Any, after: Any, fires: bool
) -> None:
    """A ``when`` rule fires when false before and true after, never while it holds."""
    path = when.split()[0]
    rule = Rule(when=when)

    change = updated({"id": "E1", path: before}, {"id": "E1", path: after})

    assert diff.rule_matches(rule, change) is fires


def test_threshold_counts_creation_as_previously_false() -> None:
    """A created record meeting the condition fires; a deleted one never does."""
    rule = Rule(when="count > 0")
    created = Change(kind="created", key="1", record={"count": 2}, previous=None)
    deleted = Change(kind="deleted", key="1", record=None, previous={"count": 2})

    assert diff.rule_matches(rule, created)
    assert not diff.rule_matches(rule, deleted)


def test_threshold_on_a_nested_path() -> None:
    """A condition may name a nested field or a keyed-list item."""
    rule = Rule(when="tickets[A].left < 5")
    change = updated(
        {"tickets": [{"id": "A", "left": 5}]}, {"tickets": [{"id": "A", "left": 4}]}
    )

    assert diff.rule_matches(rule, change)


@pytest.mark.parametrize("text", ["waitlist >= ", "a >> 1", "a >= x", ">= 3", ""])
def test_bad_condition_is_rejected(text: str) -> None:
    """A condition that cannot be read raises ValueError naming it."""
    with pytest.raises(ValueError, match="expected 'path op number'"):
        diff.parse_condition(text)


def test_rule_kinds_and_fields() -> None:
    """Rules narrow by kind and changed fields; fields match nested and list paths."""
    change = updated(
        {"status": "a", "club": {"name": "x"}, "tickets": [{"id": "T", "title": "5k"}]},
        {
            "status": "a",
            "club": {"name": "y"},
            "tickets": [{"id": "T", "title": "5 km"}],
        },
    )

    assert diff.rule_matches(Rule(kinds=("updated",)), change)
    assert not diff.rule_matches(Rule(kinds=("created",)), change)
    assert diff.rule_matches(Rule(fields=("club",)), change)
    assert diff.rule_matches(Rule(fields=("club.name",)), change)
    assert diff.rule_matches(Rule(fields=("tickets.title",)), change)
    assert not diff.rule_matches(Rule(fields=("status",)), change)


def test_apply_rules_routes_to_rule_channels() -> None:
    """Without rules all changes go to the watch's channels; with rules, to theirs."""
    created = Change(kind="created", key="1", record={"s": "a"}, previous=None)
    deleted = Change(kind="deleted", key="2", record=None, previous={"s": "a"})
    plain = make_watch()
    ruled = make_watch(
        rules=(
            Rule(kinds=("created",)),
            Rule(kinds=("created",), channels=("ops",)),
        )
    )

    assert diff.apply_rules(plain, [created, deleted]) == [
        (created, ("team",)),
        (deleted, ("team",)),
    ]
    assert diff.apply_rules(ruled, [created, deleted]) == [(created, ("team", "ops"))]


# Event ids and events


def test_event_id_is_stable_and_distinct() -> None:
    """The same inputs give the same id; any different input gives another."""
    base = diff.event_id("AB12/registrations", 4, "R1", "updated")

    assert base == diff.event_id("AB12/registrations", 4, "R1", "updated")
    assert base.startswith("evt_")
    others = {
        diff.event_id("AB12/orders", 4, "R1", "updated"),
        diff.event_id("AB12/registrations", 5, "R1", "updated"),
        diff.event_id("AB12/registrations", 4, "R2", "updated"),
        diff.event_id("AB12/registrations", 4, "R1", "deleted"),
        diff.event_id("AB12/registrations", 4, None, "updated"),
    }
    assert base not in others
    assert len(others) == 5


def test_a_to_b_to_a_to_b_gives_distinct_events() -> None:
    """A record flipping back and forth gives a new event id for every flip."""
    watch = make_watch()
    states = [
        {"id": "1", "s": "A"},
        {"id": "1", "s": "B"},
        {"id": "1", "s": "A"},
        {"id": "1", "s": "B"},
    ]
    ids = []
    for generation, (old, new) in enumerate(itertools.pairwise(states), start=1):
        (change,) = diff.diff(snap(old), snap(new))
        ids.append(diff.build_event(watch, change, generation, NOW).id)

    assert len(set(ids)) == 3


def test_build_event() -> None:
    """An event carries the watch, the typed kind and the change's content."""
    watch = make_watch()
    (change,) = diff.diff(snap({"id": "1", "s": "a"}), snap({"id": "1", "s": "b"}))

    event = diff.build_event(watch, change, 7, NOW)

    assert event.type == "registration.updated"
    assert event.id == diff.event_id("AB12/registrations", 7, "1", "updated")
    assert event.watch == "registrations"
    assert event.project == PROJECT
    assert event.key == "1"
    assert event.occurred_at == NOW
    assert event.to_json()["changes"] == [{"path": "s", "before": "a", "after": "b"}]
