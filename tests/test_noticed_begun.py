"""Which of the bot's messages a resumed turn that finds its notice in Slack closes (`Noticed.begun`,
bot/delivery.py): the parts of the answer given up for that notice, and nothing of anyone else's."""

from __future__ import annotations

from typing import Any

from bot.delivery import _begun_before_notice
from bot.streaming import answer_block_id, notice_block_id

BOT = "UBOT"
QUESTION = "100.000001"


def _bot(ts: str, block_id: str | None = None, user: str = BOT) -> dict[str, Any]:
    blocks = [{"type": "section", "block_id": block_id}] if block_id else []
    return {"ts": ts, "bot_id": "B1", "user": user, "text": "…", "blocks": blocks}


def test_the_parts_of_the_answer_before_the_notice_are_closed_in_a_dm_read_newest_first() -> None:
    messages = [
        _bot("104.0", notice_block_id(QUESTION)),
        {"ts": "103.5", "user": "U1", "text": "a person's"},
        _bot("103.0", notice_block_id("103.1", outcome=False)),  # another message's, refused as it came
        _bot("102.0"),
        _bot("101.0"),
        _bot("101.5", user="UOTHERBOT"),
    ]
    assert _begun_before_notice(messages, QUESTION, BOT) == ("101.0", "102.0")


def test_an_earlier_turns_answer_after_the_question_is_left_alone() -> None:
    messages = [
        _bot("101.0"),  # an earlier question's long answer, its middle message
        _bot("102.0", answer_block_id("99.0")),  # and its last
        _bot("103.0"),  # this question's, given up
        _bot("104.0", notice_block_id(QUESTION)),
        _bot("105.0"),  # a newer turn's
    ]
    assert _begun_before_notice(messages, QUESTION, BOT) == ("103.0",)


def test_nothing_without_the_notice() -> None:
    assert _begun_before_notice([_bot("101.0")], QUESTION, BOT) == ()
