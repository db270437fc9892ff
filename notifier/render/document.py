"""A small message document, its serialisations, and fitting it to a size.

Builders (batch, digest) describe a message as blocks of plain-text spans;
only the serialisers here escape, so user data can never break the markup.
Fitting lowers the number of detail lines per block until the message fits
("and 37 more"), then, as a last resort, drops whole blocks from the end:
it never cuts inside a line or an element.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from notifier.render.limits import Dialect, Limit

BAR_WIDTH = 16
_LABEL_WIDTH = 22
_CHAT_MENTION = re.compile(r"@(everyone|here|channel|all)\b", re.IGNORECASE)
_COMMONMARK = re.compile(r"([\\`*_\[\]<>~|])")
_ENTITY = re.compile(r"&(?=#?\w+;)")
_SLACK_BRACKETS = re.compile(r"([\[\]<>])")
# Slack's mrkdwn has no escape character: look-alike characters keep user
# data from turning into bold, italics, strikes or code.
_SLACK_LOOKALIKES = str.maketrans(
    {"*": "\u2217", "_": "\u02cd", "~": "\u223c", "`": "\u02cb"}
)
_URL_SAFE = ":/?#@!$&'*+,;=%-._~"


@dataclass(frozen=True)
class Span:
    """A run of plain text, bold or linked."""

    text: str
    bold: bool = False
    url: str | None = None


Line = tuple[Span, ...]


@dataclass(frozen=True)
class Item:
    """One detail entry: a main line and optional sub-lines (field changes)."""

    line: Line
    details: tuple[Line, ...] = ()


@dataclass(frozen=True)
class Bar:
    """One row of a bar chart: a label, a count, an indent level, a note."""

    label: str
    count: int
    depth: int = 0
    note: str = ""


@dataclass(frozen=True)
class Block:
    """A section: heading, intro lines, then detail items or bar rows."""

    heading: str = ""
    intro: tuple[Line, ...] = ()
    items: tuple[Item, ...] = ()
    bars: tuple[Bar, ...] = ()
    noun: str = "more"
    """What the items are, for "and 37 more registrations"."""
    total: int | None = None
    """How many things the items stand for, when only the first are built."""

    @property
    def count(self) -> int:
        """How many items the block stands for (shown or not)."""
        return len(self.items) if self.total is None else self.total


@dataclass(frozen=True)
class Cap:
    """How many detail items, and how many bar rows, each block shows."""

    items: int
    bars: int = 24


@dataclass(frozen=True)
class Document:
    """A whole message before serialisation."""

    title: str
    blocks: tuple[Block, ...] = ()
    footer: str = ""


def text(value: str, *, bold: bool = False, url: str | None = None) -> Span:
    """Shorthand for a :class:`Span`."""
    return Span(value, bold=bold, url=url)


def size(value: str) -> int:
    """Length as services count it: UTF-16 code units (Telegram does so)."""
    return len(value.encode("utf-16-le")) // 2


def plain(line: Line) -> str:
    """A line as plain text (links keep their address)."""
    return "".join(_span_text(span) for span in line)


# ---------------------------------------------------------------- escaping


def escape_markdown(value: str, dialect: Dialect) -> str:
    """Escape user data for one Markdown dialect so it shows as written."""
    if dialect == "slack":
        value = _SLACK_BRACKETS.sub(r"\\\1", value.translate(_SLACK_LOOKALIKES))
    else:
        value = _ENTITY.sub(r"\\&", _COMMONMARK.sub(r"\\\1", value))
    # A record must not be able to ping a whole chat room.
    return _CHAT_MENTION.sub("@\u200b\\1", value)


def bold_markdown(value: str, dialect: Dialect) -> str:
    """Bold user data for a dialect, or plain when bold would not survive.

    Telegram's (legacy) Markdown allows no escapes inside an entity, so
    text that needs escaping is sent without bold rather than rejected.
    """
    inner = escape_markdown(value.strip(), dialect)
    if not inner:
        return escape_markdown(value, dialect)
    if dialect == "telegram" and inner != value.strip():
        return escape_markdown(value, dialect)
    pad_left = " " if value[:1].isspace() else ""
    pad_right = " " if value[-1:].isspace() else ""
    return f"{pad_left}**{inner}**{pad_right}"


def _safe_url(url: str) -> str:
    return quote(url, safe=_URL_SAFE)


def _span_text(span: Span) -> str:
    if span.url:
        return f"{span.text}: {span.url}" if span.text else span.url
    return span.text


def _span_markdown(span: Span, dialect: Dialect) -> str:
    if span.url:
        label = escape_markdown(span.text or span.url, dialect)
        return f"[{label}]({_safe_url(span.url)})"
    if span.bold:
        return bold_markdown(span.text, dialect)
    return escape_markdown(span.text, dialect)


def _span_html(span: Span) -> str:
    inner = html.escape(span.text or span.url or "")
    if span.url:
        return f'<a href="{html.escape(_safe_url(span.url), quote=True)}">{inner}</a>'
    return f"<strong>{inner}</strong>" if span.bold else inner


# ---------------------------------------------------------------- bars


def bar(count: int, top: int, width: int = BAR_WIDTH) -> str:
    """A text bar such as ``█████░░░``: ``count`` out of ``top``, never empty
    for a non-zero count."""
    filled = 0 if top <= 0 else round(width * count / top)
    if count > 0:
        filled = max(filled, 1)
    return "█" * filled + "░" * (width - filled)


def _bar_rows(bars: Sequence[Bar]) -> list[str]:
    top = max((row.count for row in bars), default=0)
    labels = [("  " * row.depth + row.label).replace("`", "'") for row in bars]
    width = min(max((len(label) for label in labels), default=0), _LABEL_WIDTH)
    rows = []
    for row, label in zip(bars, labels, strict=True):
        if len(label) > width:
            label = label[: width - 1] + "…"
        note = f"  {row.note}" if row.note else ""
        rows.append(f"{label.ljust(width)} {bar(row.count, top)} {row.count}{note}")
    return rows


def _bars_html(bars: Sequence[Bar]) -> str:
    top = max((row.count for row in bars), default=0)
    rows = []
    for row in bars:
        px = 0 if top <= 0 else max(round(200 * row.count / top), 1 if row.count else 0)
        fill = (
            f'<table role="presentation" cellpadding="0" cellspacing="0"><tr>'
            f'<td width="{px}" height="12" bgcolor="#2f6fd6" '
            f'style="width:{px}px;height:12px;background:#2f6fd6;font-size:0;'
            f'line-height:0">&nbsp;</td></tr></table>'
            if px
            else ""
        )
        weight = "bold" if row.depth == 0 else "normal"
        note = f' <span style="color:#777">{html.escape(row.note)}</span>'
        rows.append(
            f'<tr><td style="padding:2px 10px 2px {4 + 14 * row.depth}px;'
            f'font-weight:{weight}">{html.escape(row.label)}</td>'
            f'<td width="200" style="width:200px;padding:2px 0">{fill}</td>'
            f'<td style="padding:2px 0 2px 8px">{row.count}'
            f"{note if row.note else ''}</td></tr>"
        )
    return (
        '<table role="presentation" cellpadding="0" cellspacing="0" '
        'style="border-collapse:collapse;margin:4px 0 8px">'
        + "".join(rows)
        + "</table>"
    )


# ---------------------------------------------------------------- serialisers


def _more(block: Block, shown: int, total: int) -> str:
    return f"…and {total - shown} more {block.noun}".rstrip()


def _chunks_markdown(
    doc: Document, dialect: Dialect, cap: Cap, merge: bool
) -> list[str]:
    def line_md(line: Line) -> str:
        return "".join(_span_markdown(span, dialect) for span in line)

    chunks = [bold_markdown(doc.title, dialect), ""] if merge else []
    for block in doc.blocks:
        if block.heading:
            chunks.append(bold_markdown(block.heading, dialect))
        chunks.extend(line_md(line) for line in block.intro)
        chunks.extend(_items_markdown(block, cap, line_md, dialect))
        if block.bars:
            rows = block.bars[: max(cap.bars, 1)]
            chunks.append("```\n" + "\n".join(_bar_rows(rows)) + "\n```")
            if len(rows) < len(block.bars):
                chunks.append(
                    escape_markdown(_more(block, len(rows), len(block.bars)), dialect)
                )
        chunks.append("")
    if doc.footer:
        chunks.append(escape_markdown(doc.footer, dialect))
    return _trim_blank(chunks)


def _items_markdown(
    block: Block, cap: Cap, line_md: Callable[[Line], str], dialect: Dialect
) -> list[str]:
    shown = block.items[: cap.items]
    chunks = []
    for item in shown:
        entry = "- " + line_md(item.line)
        entry += "".join("\n    - " + line_md(detail) for detail in item.details)
        chunks.append(entry)
    if len(shown) < block.count:
        chunks.append(escape_markdown(_more(block, len(shown), block.count), dialect))
    return chunks


def _chunks_text(doc: Document, cap: Cap, merge: bool) -> list[str]:
    chunks = [doc.title, ""] if merge else []
    for block in doc.blocks:
        if block.heading:
            chunks.append(block.heading)
        chunks.extend(plain(line) for line in block.intro)
        shown = block.items[: cap.items]
        for item in shown:
            entry = "• " + plain(item.line)
            entry += "".join("\n    " + plain(detail) for detail in item.details)
            chunks.append(entry)
        if len(shown) < block.count:
            chunks.append(_more(block, len(shown), block.count))
        if block.bars:
            rows = block.bars[: max(cap.bars, 1)]
            chunks.append("\n".join(_bar_rows(rows)))
            if len(rows) < len(block.bars):
                chunks.append(_more(block, len(rows), len(block.bars)))
        chunks.append("")
    if doc.footer:
        chunks.append(doc.footer)
    return _trim_blank(chunks)


_HTML_HEAD = (
    '<div style="font-family:Arial,Helvetica,sans-serif;font-size:14px;'
    'color:#222;line-height:1.45">'
)
_P = '<p style="margin:4px 0">'
_MUTED = '<p style="margin:4px 0;color:#666">'
_SMALL = '<p style="margin:16px 0 0;color:#888;font-size:12px">'


def _chunks_html(doc: Document, cap: Cap) -> list[str]:
    def line_html(line: Line) -> str:
        return "".join(_span_html(span) for span in line)

    chunks = [
        f'<h2 style="font-size:18px;margin:0 0 10px">{html.escape(doc.title)}</h2>'
    ]
    for block in doc.blocks:
        if block.heading:
            chunks.append(
                f'<h3 style="font-size:15px;margin:14px 0 4px">'
                f"{html.escape(block.heading)}</h3>"
            )
        chunks.extend(f"{_P}{line_html(line)}</p>" for line in block.intro)
        shown = block.items[: cap.items]
        if shown:
            entries = []
            for item in shown:
                details = "".join(
                    f'<br><span style="color:#555">{line_html(d)}</span>'
                    for d in item.details
                )
                entries.append(f"<li>{line_html(item.line)}{details}</li>")
            chunks.append(
                '<ul style="margin:4px 0;padding-left:20px">'
                + "".join(entries)
                + "</ul>"
            )
        if len(shown) < block.count:
            chunks.append(_muted(_more(block, len(shown), block.count)))
        if block.bars:
            rows = block.bars[: max(cap.bars, 1)]
            chunks.append(_bars_html(rows))
            if len(rows) < len(block.bars):
                chunks.append(_muted(_more(block, len(rows), len(block.bars))))
    if doc.footer:
        chunks.append(f"{_SMALL}{html.escape(doc.footer)}</p>")
    return chunks


def _muted(value: str) -> str:
    return f"{_MUTED}{html.escape(value)}</p>"


def _trim_blank(chunks: list[str]) -> list[str]:
    while chunks and chunks[-1] == "":
        chunks.pop()
    return chunks


def serialise(
    doc: Document, dialect: Dialect, cap: Cap, *, merge: bool = False
) -> list[str]:
    """The document as a list of self-contained chunks (lines or elements)."""
    if dialect == "html":
        return _chunks_html(doc, cap)
    if dialect == "text":
        return _chunks_text(doc, cap, merge)
    return _chunks_markdown(doc, dialect, cap, merge)


def join(chunks: Sequence[str], dialect: Dialect) -> str:
    """Chunks as one body (HTML wrapped in one styled container)."""
    if dialect == "html":
        return _HTML_HEAD + "\n".join(chunks) + "\n</div>"
    return "\n".join(chunks)


# ---------------------------------------------------------------- fitting


def fit(doc: Document, dialect: Dialect, limit: Limit, *, title: str = "") -> str:
    """The largest rendering of ``doc`` that fits ``limit``.

    ``title`` is the title as sent, when the service counts it against the
    body. Detail items give way first (searched from ``limit.items`` down),
    then bar rows; when even headings alone are too long, whole chunks are
    dropped from the end and an ellipsis line says so.
    """
    budget = limit.budget - (size(title) + 2 if limit.shared and title else 0)
    merge = limit.merged and dialect != "html"

    def build(cap: Cap) -> str:
        return join(serialise(doc, dialect, cap, merge=merge), dialect)

    found = _largest(lambda n: build(Cap(items=n)), limit.items, budget)
    if found is None:
        found = _largest(lambda n: build(Cap(items=0, bars=n)), Cap(0).bars, budget)
    if found is not None:
        return found
    return _drop_tail(serialise(doc, dialect, Cap(0, 1), merge=merge), dialect, budget)


def _largest(build: Callable[[int], str], top: int, budget: int) -> str | None:
    """The rendering with the largest ``n`` in ``0..top`` that fits ``budget``."""
    best = build(top)
    if size(best) <= budget:
        return best
    low, high, found = 0, top - 1, None
    while low <= high:
        middle = (low + high) // 2
        body = build(middle)
        if size(body) <= budget:
            found, low = body, middle + 1
        else:
            high = middle - 1
    return found


def _drop_tail(chunks: list[str], dialect: Dialect, budget: int) -> str:
    tail = f"{_MUTED}…</p>" if dialect == "html" else "…"
    while chunks and size(join([*chunks, tail], dialect)) > budget:
        chunks.pop()
    return join([*chunks, tail], dialect)


def fit_title(title: str, width: int) -> str:
    """A title within ``width`` characters, cut at a word with "…" when needed."""
    title = " ".join(title.split())
    if width <= 0 or size(title) <= width:
        return title
    cut = title[: max(width - 1, 1)]
    if " " in cut[width // 2 :]:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,:;") + "…"
