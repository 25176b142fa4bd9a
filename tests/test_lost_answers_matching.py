"""How a lost post's message is known among the bot's messages (bot/lost_answers.py): by its first
characters, as Slack gives the message back, which is not always as it was sent."""

from __future__ import annotations

from bot.lost_answers import begins_with, shown_text

SENT = "**Short answer:** use the [admin console](https://example.com/k?a=1&b=2) & restart it"


def test_a_message_given_back_as_sent_is_known() -> None:
    message = {"blocks": [{"type": "markdown", "text": SENT + ", then wait."}]}
    assert begins_with(shown_text(message), SENT)


def test_a_message_given_back_in_mrkdwn_is_known() -> None:
    message = {
        "text": "*Short answer:* use the <https://example.com/k?a=1&amp;b=2|admin console> &amp; restart it"
    }
    assert begins_with(shown_text(message), SENT)


def test_a_message_given_back_as_rich_text_is_known() -> None:
    section = {
        "type": "rich_text_section",
        "elements": [
            {"type": "text", "text": "Short answer:", "style": {"bold": True}},
            {"type": "text", "text": " use the "},
            {"type": "link", "url": "https://example.com/k?a=1&b=2", "text": "admin console"},
            {"type": "text", "text": " & restart it"},
        ],
    }
    message = {
        "text": "unused",
        "blocks": [{"type": "rich_text", "elements": [section]}, {"type": "context_actions", "elements": []}],
    }
    assert shown_text(message) == "Short answer: use the admin console & restart it"
    assert begins_with(shown_text(message), SENT)


def test_another_message_is_not_taken_for_it() -> None:
    assert not begins_with("*Short answer:* use the <https://x|admin console> and wait", SENT)
    assert not begins_with("Short answer", SENT)  # shorter than what was sent: another message


def test_a_message_of_no_letters_is_known_only_as_sent() -> None:
    assert begins_with("— —", "— —")
    assert not begins_with("anything at all", "— —")
