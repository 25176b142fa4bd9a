"""Markdown for Slack: each construct in both dialects, defanging, streaming-safe formatting, cuts."""

from __future__ import annotations

import random

import pytest

from bot.formatting import (
    MESSAGE_LIMITS,
    RULE,
    ZWSP,
    Limits,
    SlackMarkdown,
    find_cut,
    inside_code,
    sendable,
    split_markdown,
    to_mrkdwn,
)

# (model's Markdown, what the markdown_text / markdown block gets, what mrkdwn gets)
CONSTRUCTS = [
    ("# Heading", "# Heading", "*Heading*"),
    ("### Small **heading**", "### Small **heading**", "*Small heading*"),
    ("some **bold** text", "some **bold** text", "some *bold* text"),
    ("some __bold__ text", "some __bold__ text", "some *bold* text"),
    ("an *italic* word", "an *italic* word", "an _italic_ word"),
    ("an _italic_ word", "an _italic_ word", "an _italic_ word"),
    ("***both***", "***both***", "*_both_*"),
    ("~~gone~~", "~~gone~~", "~gone~"),
    ("run `ls -l <dir>` now", "run `ls -l <dir>` now", "run `ls -l &lt;dir&gt;` now"),
    ("```python\nif a < b:\n    pass\n```", "```\nif a < b:\n    pass\n```",
     "```\nif a &lt; b:\n    pass\n```"),
    ("- one\n- two\n  - nested", "- one\n- two\n  - nested", "• one\n• two\n  • nested"),
    ("* star item", "* star item", "• star item"),
    ("1. first\n2. second", "1. first\n2. second", "1. first\n2. second"),
    ("- [ ] todo\n- [x] done", "- ☐ todo\n- ☑ done", "• ☐ todo\n• ☑ done"),
    ("> quoted *words*", "> quoted *words*", "> quoted _words_"),
    ("see [the docs](https://x.io/a?b=1&c=2)", "see [the docs](https://x.io/a?b=1&c=2)",
     "see <https://x.io/a?b=1&amp;c=2|the docs>"),
    ("![logo](https://x.io/l.png)", "![logo](https://x.io/l.png)", "<https://x.io/l.png|logo>"),
    ("go to https://x.io/a_b_c now", "go to https://x.io/a_b_c now", "go to https://x.io/a_b_c now"),
    ("<https://x.io|slack style>", "[slack style](https://x.io)", "<https://x.io|slack style>"),
    ("<https://x.io>", "https://x.io", "https://x.io"),
    ("a < b > c & d", "a \\< b > c & d", "a &lt; b &gt; c &amp; d"),
    ("&amp; is an entity", "\\&amp; is an entity", "&amp;amp; is an entity"),
    ("<b>html</b>", "\\<b>html\\</b>", "&lt;b&gt;html&lt;/b&gt;"),
    ("above\n\n---\n\nbelow", f"above\n\n{RULE}\n\nbelow", f"above\n\n{RULE}\n\nbelow"),
    ("already \\*escaped\\*", "already \\*escaped\\*", "already *escaped*"),
    # A link whose label holds code or an escape (to_mrkdwn used to crash on these).
    ("see [`config.yml`](https://x.io/c)", "see [`config.yml`](https://x.io/c)",
     "see <https://x.io/c|`config.yml`>"),
    ("a [x\\*y](https://x.io) b", "a [x\\*y](https://x.io) b", "a <https://x.io|x*y> b"),
]  # fmt: skip

DEFANGED = [
    ("hey @channel look", f"hey @{ZWSP}channel look"),
    ("@here and @everyone", f"@{ZWSP}here and @{ZWSP}everyone"),
    ("@Channel shouting", f"@{ZWSP}Channel shouting"),
    ("<!channel> now", f"@{ZWSP}channel now"),
    ("<!here|here> now", f"@{ZWSP}here now"),
    ("<!everyone>", f"@{ZWSP}everyone"),
    ("ask <@U123ABC>", f"ask @{ZWSP}U123ABC"),
    ("ask <@U123ABC|ann>", f"ask @{ZWSP}ann"),
    ("<!subteam^S1|@devs> help", f"@{ZWSP}devs help"),
    ("in <#C123|general>", "in #general"),
    ("mail me@example.com", "mail me@example.com"),
]

TABLE = "| Name | Value |\n|:-----|------:|\n| **alpha** | 1 |\n| b | [x](http://y) |"
TABLE_AS_CODE = "```\nName   Value\n-----  ------------\nalpha  1\nb      x (http://y)\n```"


@pytest.mark.parametrize(("markdown", "slack_markdown", "mrkdwn"), CONSTRUCTS)
def test_each_markdown_construct_in_both_dialects(markdown: str, slack_markdown: str, mrkdwn: str) -> None:
    assert SlackMarkdown.format(markdown) == slack_markdown
    assert to_mrkdwn(markdown) == mrkdwn


def test_tables_become_aligned_code_in_both_dialects() -> None:
    assert SlackMarkdown.format(TABLE) == TABLE_AS_CODE + "\n"
    assert to_mrkdwn(TABLE).strip() == TABLE_AS_CODE
    assert SlackMarkdown.format("| not | a table |\nplain") == "| not | a table |\nplain"


@pytest.mark.parametrize(("text", "safe"), DEFANGED)
def test_mentions_the_model_writes_are_defanged(text: str, safe: str) -> None:
    assert SlackMarkdown.format(text) == safe
    mrkdwn = to_mrkdwn(text)
    assert "<!" not in mrkdwn and "<@" not in mrkdwn
    for word in ("@channel", "@here", "@everyone"):
        assert word not in mrkdwn.lower()


def test_mentions_inside_code_are_left_as_code() -> None:
    assert SlackMarkdown.format("`<!here>`") == "`<!here>`"
    assert to_mrkdwn("`<!here>`") == "`&lt;!here&gt;`"


def test_an_unclosed_code_block_is_closed() -> None:
    assert SlackMarkdown.format("look:\n```\nx = 1") == "look:\n```\nx = 1\n```"


# A code span that seems to close where a chunk ends, but whose closing run grows with the next
# chunk: its "code" was then given out as it was, a live `<!channel>` included.
GROWING_RUN = "Type `<!channel>``` to wrap code."
SAMPLE = "\n\n".join(
    [c[0] for c in CONSTRUCTS]
    + [t for t, _ in DEFANGED]
    + [TABLE, GROWING_RUN, "windows\r\nlines\r\n", "-" * 60, "~~~\n```sh\nls\n```\n~~~", "tail <!here"]
)


def test_formatting_in_any_chunks_gives_the_same_text_and_never_takes_anything_back() -> None:
    whole = SlackMarkdown.format(SAMPLE)
    rng = random.Random(7)
    for _ in range(200):
        formatter, out, at = SlackMarkdown(), "", 0
        while at < len(SAMPLE):
            step = rng.choice([1, 1, 2, 3, 5, 8, 40])
            out += formatter.feed(SAMPLE[at : at + step])
            assert whole.startswith(out), "a streamed prefix must never change later"
            at += step
        assert out + formatter.finish() == whole


def test_a_line_end_split_between_chunks_leaves_no_carriage_return() -> None:
    formatter = SlackMarkdown()
    out = "".join(formatter.feed(chunk) for chunk in ["one\r", "\ntwo\r", "\n\r", "\nthree\r"])
    assert out + formatter.finish() == "one\ntwo\n\nthree"


def test_a_long_rule_streamed_in_pieces_is_still_a_rule() -> None:
    formatter = SlackMarkdown()
    out = "".join(formatter.feed(chunk) for chunk in ["Intro\n", "-" * 30, "-" * 30, "\nafter"])
    assert out + formatter.finish() == f"Intro\n{RULE}\nafter"


def test_a_fence_inside_a_tilde_block_is_code_that_closes_nothing() -> None:
    """The block is given out as ```, so a ``` line inside it would have closed it early, for
    Slack and for the cuts and mrkdwn."""
    text = SlackMarkdown.format("Run:\n~~~\n```sh\nrm -rf <!here>\n```\n~~~\nDone")
    assert text == f"Run:\n```\n{ZWSP}```sh\nrm -rf <!here>\n{ZWSP}```\n```\nDone"
    assert not inside_code(text)
    assert inside_code(text[: text.index("rm")])
    assert to_mrkdwn(text).endswith("```\nDone")
    assert "<!here>" not in to_mrkdwn(text)  # escaped as code, not given to Slack as a mention


def test_a_backtick_run_at_the_end_of_a_chunk_is_not_taken_for_a_closing_one() -> None:
    formatter = SlackMarkdown()
    out = formatter.feed("Type `<!channel>`") + formatter.feed("`` to wrap code.") + formatter.finish()
    assert out == SlackMarkdown.format(GROWING_RUN) == f"Type `@{ZWSP}channel``` to wrap code."


@pytest.mark.parametrize("url", ["!here", "!channel", "@U123", "!subteam^S1", "/relative/path"])
def test_a_link_to_anything_but_a_web_or_mail_address_is_text_in_mrkdwn(url: str) -> None:
    """In mrkdwn, `<!here|label>` and `<@U123|label>` are mentions: a Markdown link the model
    writes to such a "URL" must not become one."""
    mrkdwn = to_mrkdwn(f"Sure: [read this]({url}) now")
    assert "<" not in mrkdwn and mrkdwn.startswith("Sure: read this (")
    assert to_mrkdwn("[docs](HTTPS://x.io)") == "<HTTPS://x.io|docs>"


def test_words_are_given_out_before_their_line_ends() -> None:
    formatter = SlackMarkdown()
    assert formatter.feed("Hello wor") == "Hello wor"
    assert formatter.feed("ld, @chan") == "ld, "  # may still become @channel
    assert formatter.feed("nel!\n") == f"@{ZWSP}channel!\n"
    assert formatter.feed("| a |") == ""  # may be a table row


SMALL = Limits(soft=40, hard=60)


def test_cut_at_the_first_blank_line_past_the_soft_limit() -> None:
    text = "a" * 30 + "\n\n" + "b" * 20 + "\n\n" + "c" * 30
    cut = find_cut(text, SMALL)
    assert cut is not None and cut.head == "a" * 30 + "\n\n" + "b" * 20 and cut.tail == "c" * 30


def test_inline_code_at_the_start_of_a_line_is_no_code_block_to_a_cut() -> None:
    """ "```npm ci``` is faster" is inline code, for Slack and for the formatter; the cut took the
    line for a fence and closed and reopened a block that was never there (everything after it
    then showed as code)."""
    text = SlackMarkdown.format("```npm ci``` is faster.\n\n" + "\n\n".join(["words " * 5] * 6))
    parts = split_markdown(text, SMALL)
    assert len(parts) >= 2 and parts[0].startswith("```npm ci```")
    assert not any(part.endswith("```") or part.startswith("```\n") for part in parts)


def test_cut_inside_a_long_code_block_closes_and_reopens_it() -> None:
    code = "```\n" + "\n".join(f"line {i:02d}" for i in range(12)) + "\n```"
    parts = split_markdown(code, SMALL)
    assert len(parts) >= 2
    for part in parts:
        assert len(part) <= SMALL.hard + 4
        assert part.startswith("```") and part.endswith("```")
    body = [line for part in parts for line in part.split("\n") if line != "```"]
    assert body == [f"line {i:02d}" for i in range(12)]


def test_a_long_line_is_cut_at_a_space_and_a_word_never_lost() -> None:
    words = " ".join(f"w{i}" for i in range(60))
    parts = split_markdown(words, SMALL)
    assert all(len(p) <= SMALL.hard for p in parts)
    assert " ".join(parts).split() == words.split()


def test_sendable_never_runs_past_a_later_cut() -> None:
    rng = random.Random(3)
    text = SlackMarkdown.format(SAMPLE * 3)
    for limits in (SMALL, Limits(soft=200, hard=300), MESSAGE_LIMITS):
        rest = text
        while rest:
            cut = find_cut(rest, limits)
            end = len(cut.head) if cut else len(rest)
            for length in sorted(rng.sample(range(1, len(rest) + 1), min(30, len(rest)))):
                prefix = rest[:length]
                if find_cut(prefix, limits) is None:
                    shown = sendable(prefix, limits)
                    assert rest[:shown] == (cut.head if cut else rest)[:shown], "shown text must stay"
                    assert shown <= end
            rest = cut.tail if cut else ""
