"""Markdown for Slack: the model's Markdown made safe and readable in Slack, and cut to fit.

- `SlackMarkdown` turns the model's raw text into standard Markdown that Slack renders natively
  (`markdown_text`, the `markdown` block). It works incrementally: fed any chunking of the text,
  it gives out only what can no longer change, so a streamed message only ever grows.
- `to_mrkdwn` converts that Markdown to Slack's older mrkdwn, for `text` and section blocks.
- `MessageCut` / `split_markdown` decide where a long answer is cut into messages: at a block
  boundary where possible, never leaving a code block open.

What the model writes can never ping people: `@channel`, `@here`, `@everyone`, `<!…>` and
`<@U…>` tokens lose their power (a zero-width space after the `@`). Slack's control characters
are escaped where Slack would read them: `<` (and `&` before an entity) with a backslash in
Markdown, `&`, `<` and `>` as HTML entities in mrkdwn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ZWSP = "\u200b"  # between "@" and a word, it keeps the text readable and the mention dead
RULE = "───────────"  # Slack draws no horizontal rule from Markdown

# Slack takes 12,000 characters of Markdown per message (MESSAGE_LIMITS stays under it) and
# 40,000 of text.
TEXT_LIMIT = 40_000

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
_RULE_LINE = re.compile(r"^\s{0,3}([-*_])(?:\s*\1){2,}\s*$")
_TABLE_DIVIDER = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
_TASK = re.compile(r"^(\s*[-*+]\s+)\[([ xX])\]\s")
_BROADCAST = ("channel", "here", "everyone")
_SLACK_TOKEN = re.compile(r"<([!@#])([^<>\s|]*)(?:\|([^<>\n]*))?>")
_SLACK_LINK = re.compile(r"<((?:https?|mailto):[^<>\s|]+)(?:\|([^<>\n]*))?>")
_ENTITY = re.compile(r"&(?:#\d+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
_INLINE_SPECIAL = re.compile(r"[\\`<&@]")
_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_MAX_HOLD = 300  # an unfinished `<…>` token or rule longer than this is plain text after all


def defang_token(kind: str, ident: str, label: str | None) -> str:
    """Readable, harmless text for a Slack control token the model produced (<!here>, <@U1>…)."""
    if kind == "#":
        return "#" + (label or ident)
    if kind == "@":
        return "@" + ZWSP + (label or ident).lstrip("@")
    if ident.startswith("subteam^"):
        return "@" + ZWSP + (label or "group").lstrip("@")
    if ident.startswith("date^") and label:
        return label
    return "@" + ZWSP + (label or ident).lstrip("@")


class SlackMarkdown:
    """Raw model text in (in any chunks), Slack-ready Markdown out, never taking back any of it."""

    def __init__(self) -> None:
        self._pending = ""  # raw text not yet given out (an unfinished line, word or token)
        self._fence: str | None = None  # the opening fence while inside a code block
        self._table: list[str] = []  # the rows of a table, held until it ends
        self._line_started = False  # the start of the current line was given out already

    @classmethod
    def format(cls, text: str) -> str:
        formatter = cls()
        return formatter.feed(text) + formatter.finish()

    def feed(self, raw: str) -> str:
        """Add raw text; returns the formatted text that became final."""
        raw = raw.replace("\x00", "")
        if raw.startswith("\n") and self._pending.endswith("\r"):
            self._pending = self._pending[:-1]  # the chunks split a "\r\n"
        self._pending += raw.replace("\r\n", "\n")
        out: list[str] = []
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            out.append(self._line(line, "\n"))
        held = "\r" if self._pending.endswith("\r") else ""  # may be the first half of "\r\n"
        self._pending = self._pending.removesuffix(held)
        if self._pending:
            out.append(self._partial_line())
        self._pending += held
        return "".join(out)

    def finish(self) -> str:
        """The end of the answer: what was held, formatted; an open code block is closed."""
        line, self._pending = self._pending.removesuffix("\r"), ""
        out = self._line(line, "") if line else ""
        if self._table:
            out += self._flush_table()
        if self._fence is not None:
            self._fence = None
            out += "\n```"
        return out

    def _line(self, line: str, end: str) -> str:
        """A finished line (or the rest of one whose start was given out), with its `end`."""
        started, self._line_started = self._line_started, False
        if started:
            return (line if self._fence is not None else _inline(line, complete=True)[0]) + end
        if self._fence is not None:
            if _closes_fence(line, self._fence):
                self._fence = None
                return "```" + end
            if line.lstrip().startswith("```"):
                # Code, not a fence (the block opened with ~~~ or more backticks), but the block
                # is given out as ```: the space keeps Slack and our cuts from closing it here.
                return ZWSP + line + end
            return line + end
        is_row = line.lstrip().startswith("|")
        out = self._flush_table() if self._table and not is_row else ""
        if is_row:
            self._table.append(line)
            return out
        fence = _FENCE.match(line)
        if fence and fence.group(2)[0] not in fence.group(3):
            self._fence = fence.group(2)
            return out + fence.group(1) + "```" + end  # no language: Slack would print it
        if _RULE_LINE.match(line):
            return out + RULE + end
        return out + _block_line(line) + end

    def _partial_line(self) -> str:
        """Give out the start of the unfinished last line, as far as it can no longer change."""
        line = self._pending
        if self._fence is not None:
            if not self._line_started:
                stripped = line.lstrip()
                if not stripped or stripped[0] in "`~":
                    return ""  # it may be the closing fence
                self._line_started = True
            self._pending = ""
            return line
        if self._line_started:
            text, used = _inline(line, complete=False)
            self._pending = line[used:]
            return text
        if self._table or _may_be_structure(line):
            return ""
        prefix, rest = _task_box(line)
        text, used = _inline(rest, complete=False)
        if not prefix and used == 0:
            return ""
        self._line_started = True
        self._pending = rest[used:]
        return prefix + text

    def _flush_table(self) -> str:
        rows, self._table = self._table, []
        if len(rows) < 2 or not _TABLE_DIVIDER.match(rows[1]):
            return "".join(_block_line(row) + "\n" for row in rows)
        return _table_as_code(rows) + "\n"


def _closes_fence(line: str, fence: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= len(fence) and set(stripped) == {fence[0]}


def _may_be_structure(line: str) -> bool:
    """An unfinished line whose meaning depends on how it goes on: a fence, table row, rule, task."""
    stripped = line.lstrip()
    if not stripped or stripped[0] == "|":
        return True
    if re.fullmatch(r"`+|~+|(```|~~~).*", stripped):
        return True
    if re.fullmatch(r"[-*+]\s+\[?[ xX]?\]?", stripped):
        return True
    return set(stripped) <= set("-*_ ") and len(stripped) < _MAX_HOLD


def _task_box(line: str) -> tuple[str, str]:
    """A task-list item's box as a symbol (Slack draws none): ("- ☐ ", rest) or ("", line)."""
    task = _TASK.match(line)
    if not task:
        return "", line
    box = "☑" if task.group(2) in "xX" else "☐"
    return task.group(1) + box + " ", line[task.end() :]


def _block_line(line: str) -> str:
    prefix, rest = _task_box(line)
    return prefix + _inline(rest, complete=True)[0]


def _inline(text: str, *, complete: bool) -> tuple[str, int]:
    """Format inline Markdown; returns the text and how much of the input it used.

    Unless `complete`, it stops before whatever may still read differently once more text
    arrives (a `<…>` token, a code span, an entity, a word after `@`), so what it returns is final.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        # Plain text up to the next character that may mean something goes out as it is.
        special = _INLINE_SPECIAL.search(text, i)
        if special is None:
            out.append(text[i:])
            i = n
            break
        if special.start() > i:
            out.append(text[i : special.start()])
            i = special.start()
        ch = text[i]
        if ch == "\\":
            if i + 1 < n and text[i + 1] in _PUNCTUATION:
                out.append(text[i : i + 2])
                i += 2
                continue
            if i + 1 == n and not complete:
                break
        elif ch == "`":
            run_end = i
            while run_end < n and text[run_end] == "`":
                run_end += 1
            close = _find_run(text, run_end - i, run_end)
            if not complete and (close < 0 or close + run_end - i == n):
                # The span may close later, or the run that seems to close it may grow with the
                # next text (and then not close it): until then its content is not known to be
                # code, and `<!here>` in it would be given out as it is.
                break
            if close >= 0:
                out.append(text[i : close + run_end - i])
                i = close + run_end - i
                continue
            out.append(text[i:run_end])
            i = run_end
            continue
        elif ch == "<":
            token = _SLACK_TOKEN.match(text, i)
            if token:
                out.append(defang_token(token.group(1), token.group(2), token.group(3)))
                i = token.end()
                continue
            link = _SLACK_LINK.match(text, i)
            if link:
                url, label = link.group(1), link.group(2)
                out.append(f"[{label}]({url})" if label else url)
                i = link.end()
                continue
            if not complete and ">" not in text[i:] and n - i < _MAX_HOLD:
                break
            out.append("\\<")
            i += 1
            continue
        elif ch == "&":
            if _ENTITY.match(text, i):
                out.append("\\&")
                i += 1
                continue
            if not complete and re.fullmatch(r"&#?[A-Za-z0-9]*", text[i:]):
                break
        elif ch == "@":
            name = re.match(r"[A-Za-z]*", text[i + 1 :])
            word = name.group(0).lower() if name else ""
            if not complete and i + 1 + len(word) == n and any(b.startswith(word) for b in _BROADCAST):
                break
            if any(word.startswith(b) for b in _BROADCAST):
                out.append("@" + ZWSP)
                i += 1
                continue
        out.append(ch)
        i += 1
    return "".join(out), i


def _find_run(text: str, length: int, start: int) -> int:
    """Where a backtick run of exactly `length` starts, from `start`; -1 if there is none."""
    for match in re.finditer(r"`+", text[start:]):
        if len(match.group(0)) == length:
            return start + match.start()
    return -1


def _table_as_code(rows: list[str]) -> str:
    """A Markdown table as aligned columns in a code block (Slack draws no tables from Markdown)."""
    cells = [_cells(row) for i, row in enumerate(rows) if i != 1]
    width = max(len(r) for r in cells)
    cells = [r + [""] * (width - len(r)) for r in cells]
    widths = [max(len(r[c]) for r in cells) for c in range(width)]
    lines = ["  ".join(cell.ljust(widths[c]) for c, cell in enumerate(r)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "```\n" + "\n".join(lines) + "\n```"


def _cells(row: str) -> list[str]:
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    return [_plain(cell.strip().replace("\\|", "|")) for cell in re.split(r"(?<!\\)\|", row)]


def _plain(text: str) -> str:
    """Inline Markdown reduced to plain words (for table cells, shown as code)."""
    text = re.sub(r"!?\[([^\]]*)\]\(([^)\s]+)\)", r"\1 (\2)", text)
    text = _SLACK_LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})" if m.group(2) else m.group(1), text)
    text = _SLACK_TOKEN.sub(lambda m: defang_token(m.group(1), m.group(2), m.group(3)), text)
    text = re.sub(r"(\*\*|__|~~|`)", "", text)
    return re.sub(r"@(?=(?:channel|here|everyone))", "@" + ZWSP, text, flags=re.IGNORECASE)


# -- mrkdwn ---------------------------------------------------------------------------------


def to_mrkdwn(text: str) -> str:
    """Slack mrkdwn for Markdown (raw from the model, or as SlackMarkdown gave it out)."""
    out: list[str] = []
    in_code = False
    for line in SlackMarkdown.format(text).split("\n"):
        if line.strip() == "```":
            in_code = not in_code
            out.append(line)
        elif in_code:
            out.append(_escape(line))
        else:
            out.append(_mrkdwn_line(line))
    return "\n".join(out)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mrkdwn_line(line: str) -> str:
    heading = re.match(r"^\s*#{1,6}\s+(.*?)\s*#*\s*$", line)
    if heading:
        title = re.sub(r"(\*\*|__)", "", heading.group(1))
        return "*" + _mrkdwn_inline(title) + "*" if title else ""
    match = re.match(r"^(\s*)((?:>\s?)*)((?:[-*+]|\d{1,9}[.)])\s+)?", line)
    assert match is not None
    indent, quotes, marker = match.group(1), match.group(2), match.group(3)
    prefix = indent + "> " * quotes.count(">")
    if marker:
        bullet = marker.strip()
        prefix += "• " if bullet in ("-", "*", "+") else bullet + " "
    return prefix + _mrkdwn_inline(line[match.end() :])


_ESCAPED = re.compile(r"\\([" + re.escape("".join(sorted(_PUNCTUATION))) + r"])")
_LINK = re.compile(r"!?\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_LINKABLE = re.compile(r"(?:https?://|mailto:)", re.IGNORECASE)
_BARE_URL = re.compile(r"\b(?:https?://|mailto:)[^\s<>]*[^\s<>.,;:!?)\]'\"]")


def _mrkdwn_inline(text: str, kept: list[str] | None = None) -> str:
    """Inline Markdown to mrkdwn: code and links set aside, the rest escaped, emphasis converted.
    `kept`: what is set aside, shared with the caller when this is a link's label (which may hold
    code or escapes the caller set aside already)."""
    kept = [] if kept is None else kept

    def keep(value: str) -> str:
        kept.append(value)
        return f"\x00{len(kept) - 1}\x00"

    def code(match: re.Match[str]) -> str:
        return keep(
            "`" + _escape(match.group(2).strip() if len(match.group(1)) > 1 else match.group(2)) + "`"
        )

    def link(match: re.Match[str]) -> str:
        label, url = match.group(1), match.group(2).replace("\\", "")
        if not _LINKABLE.match(url):
            # Not a web or mail address: as a link, `<!here|…>` or `<@U1|…>` would be a mention.
            shown = _mrkdwn_inline(label, kept) + " " if label else ""
            return keep(f"{shown}({_escape(url)})")
        shown = _mrkdwn_inline(label, kept).replace("|", "¦") if label else _escape(url)
        return keep(f"<{_escape(url)}|{shown}>")

    text = re.sub(r"(`+)(.+?)\1", code, text)
    text = _ESCAPED.sub(lambda m: keep(_escape(m.group(1))), text)
    text = _LINK.sub(link, text)
    text = _BARE_URL.sub(lambda m: keep(_escape(m.group(0))), text)
    text = _escape(text)
    text = re.sub(r"\*\*\*(?=\S)(.+?)(?<=\S)\*\*\*", "\x01_\\1_\x01", text)
    text = re.sub(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1", "\x01\\2\x01", text)
    text = re.sub(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])", "_\\1_", text)
    text = re.sub(r"~~(?=\S)(.+?)(?<=\S)~~", "~\\1~", text)
    text = text.replace("\x01", "*")
    return re.sub(r"\x00(\d+)\x00", lambda m: kept[int(m.group(1))], text)


# -- cutting long answers into messages -----------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """A message is cut at the first block boundary after `soft` characters, and never runs past `hard`."""

    soft: int
    hard: int


# Room is left under Slack's 12,000 for closing a code block and a short note at the end.
MESSAGE_LIMITS = Limits(soft=9_000, hard=11_500)


@dataclass(frozen=True)
class MessageCut:
    """Where one message ends: `head` is its whole text, `tail` starts the next message."""

    head: str
    tail: str


def _line_starts(text: str) -> list[tuple[int, bool, bool]]:
    """(position, inside a code block, is a block boundary) for each line start but the first."""
    found: list[tuple[int, bool, bool]] = []
    in_code = False
    position = 0
    for line in text.split("\n")[:-1]:
        position += len(line) + 1
        is_fence = is_fence_line(line)
        closes = is_fence and in_code
        if is_fence:
            in_code = not in_code
        found.append((position, in_code, not in_code and (closes or not line.strip())))
    return found


def _first_boundary(text: str, limits: Limits) -> int | None:
    for position, _, boundary in _line_starts(text[: limits.hard + 1]):
        if boundary and limits.soft <= position <= limits.hard:
            return position
    return None


def find_cut(text: str, limits: Limits = MESSAGE_LIMITS) -> MessageCut | None:
    """Where the message holding `text` ends; None when it need not (or cannot yet) be cut.

    At the first block boundary (after a blank line or a code block) past `soft`; failing that,
    once the text runs past `hard`, at the last line start before it (closing and reopening a
    code block that spans it), else after the last space, else at `hard`. It depends only on the
    text up to the cut, so a streamed message and a posted one are cut in the same places.
    """
    boundary = _first_boundary(text, limits)
    if boundary is not None:
        if not text[boundary:].strip():
            return None  # nothing yet for a next message
        return MessageCut(text[:boundary].rstrip(), text[boundary:].lstrip("\n"))
    if len(text) <= limits.hard:
        return None
    lines = [
        (p, code) for p, code, _ in _line_starts(text[: limits.hard + 1]) if limits.soft < p <= limits.hard
    ]
    if lines:
        position, in_code = lines[-1]
        if in_code:
            return MessageCut(text[:position] + "```", "```\n" + text[position:])
        return MessageCut(text[:position].rstrip(), text[position:])
    space = text.rfind(" ", limits.soft, limits.hard)
    position = space + 1 if space >= 0 else limits.hard
    if inside_code(text[:position]):
        return MessageCut(text[:position] + "\n```", "```\n" + text[position:])
    return MessageCut(text[:position], text[position:])


def is_fence_line(line: str) -> bool:
    """A code fence as `SlackMarkdown` gives it out: ``` alone on its line (the language
    dropped). A line that only starts with ``` (inline code at the start of a line, or a fence
    of another kind shown inside a code block) is no fence."""
    return line.strip() == "```"


def inside_code(text: str) -> bool:
    """Whether formatted text ends inside a code block."""
    return sum(1 for line in text.split("\n") if is_fence_line(line)) % 2 == 1


def sendable(text: str, limits: Limits = MESSAGE_LIMITS) -> int:
    """How much of a message's text may be shown now: no later cut lands before it.

    Trailing whitespace is always held back (a cut may drop it).
    """
    stable = len(text.rstrip())
    if len(text) <= limits.soft:
        return stable
    boundary = _first_boundary(text, limits)
    if boundary is not None:
        return min(stable, boundary)
    later = [p for p, _, _ in _line_starts(text) if p > limits.soft]
    if later:
        return min(stable, later[-1])
    space = text.rfind(" ", limits.soft)
    return min(stable, space + 1 if space >= 0 else limits.soft)


def split_markdown(text: str, limits: Limits = MESSAGE_LIMITS) -> list[str]:
    """Cut formatted text into messages; nothing is lost and no code block is left open."""
    parts: list[str] = []
    rest = text.lstrip()
    while (cut := find_cut(rest, limits)) is not None:
        parts.append(cut.head)
        rest = cut.tail
    if rest.strip():
        parts.append(rest.rstrip())
    return parts
