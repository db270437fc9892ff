"""The page walk: which pages to read, what each answer holds, whether they add up.

:class:`Walker` reads every page of a watch once, from 1 to the highest
``last_page`` any page reported (or, without ``last_page``, until a short
page), through a coroutine it is given: it sends no request itself.
:func:`read_page` finds the record list of a watch in one page's ``data``
and what its pagination wrapper said; :func:`read_single` finds the object
of a single-object watch; :func:`check_pages` merges the pages of one walk
by key and lists what makes the walk unsound. The checks, and why a walk
is checked at all, are described in :mod:`notifier.atleta`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from notifier.errors import IncompleteWalkError, MalformedResponseError
from notifier.model import JSON, Watch

MAX_PAGES = 100_000
"""The most pages one walk reads; a larger ``last_page`` is an error."""

Progress = Callable[[int, int], None]


@dataclass(frozen=True, kw_only=True)
class Page:
    """One page of a walk: its records and what its pagination wrapper said."""

    number: int
    records: list[JSON]
    total: int | None
    last_page: int | None


@dataclass(kw_only=True)
class Walk:
    """The records of one walk, keyed, and why the walk is unsound (if it is)."""

    records: dict[str, JSON] = field(default_factory=dict)
    total: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        """True when nothing suggests that a record was skipped."""
        return not self.problems


@dataclass(frozen=True, kw_only=True)
class Walker:
    """Reads every page of ``watch`` once through ``read`` and checks the pages.

    ``read`` fetches one page by number (None for the only answer of an
    unpaginated watch); up to ``concurrency`` pages are read at once, and
    ``progress`` is told the pages read so far and the pages known.
    """

    watch: Watch
    read: Callable[[int | None], Awaitable[Page]]
    concurrency: int
    progress: Progress | None = None

    async def walk(self, *, paginated: bool) -> Walk:
        """Read every page once and check that the pages add up.

        :raises IncompleteWalkError: the pages cannot all be read.
        """
        watch = self.watch
        first = await self.read(1 if paginated else None)
        pages = {1: first}
        if not paginated:
            if (first.last_page or 1) > 1:
                raise IncompleteWalkError(
                    f"watch {watch.id!r} reads one page of {first.last_page}: "
                    "its query must declare $page (and $per_page) to be walked"
                )
            return check_pages(pages, watch)

        if first.last_page is None:
            await self._walk_to_short_page(pages)
            return check_pages(pages, watch)

        if self.progress is not None:
            self.progress(1, max(1, first.last_page))
        highest = first.last_page
        while True:
            if highest > MAX_PAGES:
                raise IncompleteWalkError(
                    f"watch {watch.id!r} reports {highest} pages, more than the "
                    f"{MAX_PAGES} a walk reads: raise its per_page"
                )
            wanted = [n for n in range(2, highest + 1) if n not in pages]
            if not wanted:
                return check_pages(pages, watch)
            await self._pages(wanted, pages)
            # A list that grows during the walk reports a later last_page.
            highest = max(page.last_page or 1 for page in pages.values())

    async def _pages(self, numbers: Iterable[int], pages: dict[int, Page]) -> None:
        """Fetch ``numbers`` into ``pages``, as many at once as the cap allows."""
        queue = iter(numbers)
        progress = self.progress

        async def worker() -> None:
            for number in queue:
                pages[number] = await self.read(number)
                if progress is not None:
                    last = max(page.last_page or 1 for page in pages.values())
                    progress(len(pages), last)

        workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise

    async def _walk_to_short_page(self, pages: dict[int, Page]) -> None:
        """Without ``last_page``, read pages one by one until a short or stale one."""
        watch = self.watch
        seen = {key_of(record, watch, 1) for record in pages[1].records}
        number = 1
        while len(pages[number].records) >= watch.per_page and number < MAX_PAGES:
            number += 1
            page = await self.read(number)
            pages[number] = page
            if self.progress is not None:
                self.progress(number, number)
            keys = {key_of(record, watch, number) for record in page.records}
            if keys <= seen:
                # An API that ignores $page repeats a page forever.
                break
            seen |= keys
        if number >= MAX_PAGES:
            raise IncompleteWalkError(
                f"watch {watch.id!r} has over {MAX_PAGES} pages: raise its per_page"
            )


def read_page(data: dict[str, JSON], watch: Watch, number: int) -> Page:
    """Find the record list of ``watch`` in one page's data and its wrapper's counts.

    A null list counts as empty only where the wrapper says the page is
    empty (``total`` 0, or a page past ``last_page``), as a Laravel
    paginator may answer; anywhere else it is malformed.

    :raises MalformedResponseError: the list is missing or not a list.
    """
    wrapper, name = _parent(data, watch, number)
    if name not in wrapper:
        raise _malformed(watch, number, f"data.{watch.records} is missing")
    total = _count(wrapper.get("total"))
    last_page = _count(wrapper.get("last_page"))
    current = _count(wrapper.get("current_page"))
    if current is not None and watch.paginate and current != number:
        raise _malformed(
            watch, number, f"asked for page {number} and got page {current}"
        )

    records = wrapper[name]
    if records is None and (
        total == 0 or (last_page is not None and number > last_page)
    ):
        records = []
    if not isinstance(records, list):
        found = "null" if records is None else type(records).__name__
        raise _malformed(watch, number, f"data.{watch.records} is {found}, not a list")
    return Page(number=number, records=records, total=total, last_page=last_page)


def read_single(data: dict[str, JSON], watch: Watch) -> JSON:
    """The object a single-object watch reads.

    :raises MalformedResponseError: the object is missing, null or not an object.
    """
    wrapper, name = _parent(data, watch, None)
    record = wrapper.get(name)
    if not isinstance(record, dict):
        found = "missing" if name not in wrapper else "null"
        if record is not None:
            found = type(record).__name__
        raise _malformed(
            watch,
            None,
            f"data.{watch.records} is {found}, not an object "
            "(an unknown id, or no access to it)",
        )
    return record


def check_pages(pages: Mapping[int, Page], watch: Watch) -> Walk:
    """Merge the pages of one walk by key and list what makes the walk unsound.

    :raises MalformedResponseError: a record has no usable key.
    """
    walk = Walk()
    duplicates = 0
    for number in sorted(pages):
        for record in pages[number].records:
            key = key_of(record, watch, number)
            if key in walk.records:
                duplicates += 1
                del walk.records[key]
            walk.records[key] = record
    totals = [page.total for _, page in sorted(pages.items()) if page.total is not None]
    last_pages = {
        page.last_page for page in pages.values() if page.last_page is not None
    }
    walk.total = totals[-1] if totals else None

    if duplicates:
        walk.problems.append(f"{duplicates} records on two pages")
    if len(set(totals)) > 1:
        # It may have moved and come back: name the range, not just the ends.
        walk.problems.append(f"total moved between {min(totals)} and {max(totals)}")
    if len(last_pages) > 1:
        walk.problems.append(
            f"last_page moved between {min(last_pages)} and {max(last_pages)}"
        )
    if walk.total is not None and walk.total != len(walk.records):
        walk.problems.append(f"{len(walk.records)} records but total {walk.total}")
    return walk


def key_of(record: JSON, watch: Watch, number: int) -> str:
    """The key of ``record`` as text (``watch.key`` may be a dotted path).

    :raises MalformedResponseError: the record has no usable key.
    """
    value: JSON = record
    for step in watch.key.split("."):
        value = value.get(step) if isinstance(value, dict) else None
    if value is None or isinstance(value, bool | dict | list):
        raise _malformed(watch, number, f"a record has no usable key {watch.key!r}")
    return str(value)


def request_label(watch: Watch, number: int | None) -> str:
    """Which request this is, for log lines and error messages."""
    if number is None:
        return f"watch {watch.id!r}"
    return f"page {number} of watch {watch.id!r}"


def _parent(
    data: dict[str, JSON], watch: Watch, number: int | None
) -> tuple[dict[str, JSON], str]:
    """The object holding the last segment of ``watch.records``, and that segment."""
    *steps, name = watch.records.split(".")
    node: JSON = data
    walked = "data"
    for step in steps:
        node = node.get(step) if isinstance(node, dict) else None
        walked += "." + step
        if not isinstance(node, dict):
            raise _malformed(
                watch,
                number,
                f"{walked} is {'null or missing' if node is None else 'not an object'}",
            )
    return node, name


def _malformed(watch: Watch, number: int | None, detail: str) -> MalformedResponseError:
    """A malformed-answer error naming the watch and page."""
    return MalformedResponseError(f"{detail} on {request_label(watch, number)}")


def _count(value: JSON) -> int | None:
    """A pagination count, or None when absent or not an integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None
