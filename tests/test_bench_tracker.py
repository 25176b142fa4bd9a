"""The benchmark's reading of Slack's call log: when an answer first showed and when it was final,
whichever way delivery posts it (one message, a message then updates, or Slack's streaming API);
and the soak's second look at questions not answered within their window."""

from __future__ import annotations

import math
import time

from bench.measure import percentiles
from bench.rig import Asked, Tracker, summarize
from bench.soak import Restart, follow_late
from tests.emulators.openai_api import OpenAIEmulator
from tests.emulators.slack import ApiCall, Delivery, SlackEmulator


def tracked(*questions: str) -> tuple[SlackEmulator, Tracker, dict[str, Asked]]:
    slack = SlackEmulator()
    tracker = Tracker(slack, OpenAIEmulator())
    asked = {}
    for index, qid in enumerate(questions):
        ts = f"100.00000{index}"
        asked[qid] = Asked(qid, f"C{index}", ts, ts, sent_at=0.0)
        tracker.add(asked[qid])
    return slack, tracker, asked


def call(slack: SlackEmulator, at: float, method: str, posted: str | None = None, **args: object) -> None:
    """One successful Web API call; `posted` is the ts of the message a posting method created."""
    response = {"ok": True} | ({"ts": posted} if posted else {})
    slack.calls.append(ApiCall(method, dict(args), "xoxb-test-token", response, 200, at))


def test_one_message_is_first_text_and_done_at_once() -> None:
    slack, tracker, asked = tracked("q00001")
    call(slack, 0.1, "assistant.threads.setStatus", channel_id="C0", thread_ts="100.000000", status="…")
    call(slack, 2.6, "chat.postMessage", posted="200.1", channel="C0", text="ANSq00001 the answer ENDq00001")
    tracker.read()

    answer = asked["q00001"]
    assert (answer.signal_at, answer.first_text_at, answer.done_at) == (0.1, 2.6, 2.6)
    assert answer.first_text_whole and answer.answer_messages == {("C0", "200.1")}


def test_a_message_then_updates_is_done_at_the_update_that_completes_it() -> None:
    slack, tracker, asked = tracked("q00002")
    call(slack, 0.7, "chat.postMessage", posted="200.2", channel="C0", text="ANSq00002 the first")
    call(slack, 1.7, "chat.update", channel="C0", ts="200.2", text="ANSq00002 the first words")
    call(slack, 2.7, "chat.update", channel="C0", ts="200.2", text="ANSq00002 the first words ENDq00002")
    tracker.read()

    answer = asked["q00002"]
    assert (answer.first_text_at, answer.done_at, answer.first_text_whole) == (0.7, 2.7, False)
    assert answer.answer_messages == {("C0", "200.2")}


def test_a_stream_is_done_when_it_is_stopped_after_its_last_words() -> None:
    slack, tracker, asked = tracked("q00003")
    call(slack, 0.5, "chat.startStream", posted="200.3", channel="C0", thread_ts="100.000000")
    call(slack, 0.6, "chat.appendStream", channel="C0", ts="200.3", markdown_text="ANSq00003 the")
    call(slack, 2.5, "chat.appendStream", channel="C0", ts="200.3", markdown_text=" rest ENDq00003")
    tracker.read()
    assert asked["q00003"].done_at is None  # still streaming: not final yet

    call(slack, 2.6, "chat.stopStream", channel="C0", ts="200.3", blocks=[{"type": "context_actions"}])
    tracker.read()

    answer = asked["q00003"]
    assert (answer.first_text_at, answer.done_at) == (0.6, 2.6)
    assert answer.shown_at == [0.6, 2.5, 2.6]  # each growth, and the stop that gave its buttons
    gap = summarize(tracker, [answer], 2.5)["longest_gap"]
    assert gap["p50"] is not None and abs(gap["p50"] - 1.9) < 1e-9
    assert not answer.first_text_whole and answer.answer_messages == {("C0", "200.3")}
    assert tracker.other_posts == 0  # the stream opened empty; it is the answer, not a notice


def test_rate_limited_and_failed_calls_are_counted_not_read() -> None:
    slack, tracker, asked = tracked("q00004")
    slack.calls.append(
        ApiCall("chat.postMessage", {"channel": "C0", "text": "ANSq00004 ENDq00004"}, None,
                {"ok": False, "error": "ratelimited"}, 429, 1.0)
    )  # fmt: skip
    call(slack, 1.2, "chat.postMessage", posted="200.4", channel="C0", text="Sorry, something went wrong.")
    tracker.read()

    assert tracker.rate_limited == {"chat.postMessage": 1}
    assert asked["q00004"].first_text_at is None and tracker.other_posts == 1


async def test_the_soak_looks_again_for_answers_to_questions_left_unanswered_in_their_window() -> None:
    slack = SlackEmulator()
    later = slack.user_message_event("C1", "<@UBOT> first")
    never = slack.user_message_event("C2", "<@UBOT> second")
    twice = slack.user_message_event("C3", "<@UBOT> third")
    asked_at = time.monotonic() - 2.0  # sent two seconds ago, answered now
    late = [
        Asked(qid, channel, m["ts"], m["ts"], asked_at)
        for qid, channel, m in (("q00001", "C1", later), ("q00002", "C2", never), ("q00003", "C3", twice))
    ]
    slack._add_message("C1", "UBOT", text="ANSq00001 the answer ENDq00001", thread_ts=later["ts"], bot=True)
    slack._add_message("C2", "UBOT", text="ANSq00002 the beginning only", thread_ts=never["ts"], bot=True)
    for _ in range(2):
        slack._add_message("C3", "UBOT", text="ANSq00003 again ENDq00003", thread_ts=twice["ts"], bot=True)
    found = await follow_late(slack, late, within=0.6)
    delays = found.pop("answered_after_seconds_p50"), found.pop("answered_after_seconds_max")
    assert found == {
        "unanswered_in_window": 3,
        "answered_later": 2,
        "never": 1,
        "qids": ["q00002"],
        "answered_twice": 1,
        "twice_qids": ["q00003"],
    }
    assert all(1.9 < delay < 2.9 for delay in delays)
    assert (await follow_late(slack, []))["unanswered_in_window"] == 0  # and no wait


def test_a_soak_window_counts_as_restarted_when_the_bot_was_down_or_starting_in_it() -> None:
    restart = Restart()
    assert not restart.overlaps(0, 60)  # not yet stopped
    restart.stopping_at = 75.0
    assert not restart.overlaps(0, 60)
    assert restart.overlaps(60, 120)  # stopped in it, not yet serving again
    restart.up_at = 86.0
    assert restart.overlaps(60, 120) and not restart.overlaps(120, 180)


def test_a_question_never_answered_or_acknowledged_counts_as_infinitely_late() -> None:
    """Leaving it out of the sample would make p99 the slowest of those that did come."""
    slack, tracker, asked = tracked(*(f"q1{i:04d}" for i in range(100)))
    for index, answer in enumerate(asked.values()):
        answer.deliveries.append(Delivery(200, "", acked=index >= 5, elapsed=0.01))
        if index >= 5:
            ts = f"300.{index:06d}"
            call(slack, 0.1, "reactions.add", channel=answer.channel, timestamp=answer.ts, name="eyes")
            call(slack, 2.6, "chat.postMessage", posted=ts, channel=answer.channel,
                 text=f"ANS{answer.qid} words END{answer.qid}")  # fmt: skip
    result = summarize(tracker, list(asked.values()), 2.5)
    assert result["answered"] == 95
    for figure in ("ack", "signal", "first_text", "done"):
        assert result[figure]["p99"] == math.inf, figure
    assert result["done"]["p50"] == 2.6 and result["ack"]["p50"] == 0.01
    assert percentiles([1.0, 2.0, 3.0], missing=1) == {"p50": 2.0, "p95": math.inf, "p99": math.inf}


def test_an_answer_that_lost_or_repeated_a_piece_is_counted_incomplete() -> None:
    slack, tracker, asked = tracked("q00005", "q00006", "q00007")
    whole = {qid: f"ANS{qid} first part, middle part, last part END{qid}" for qid in asked}
    shown = {
        "q00005": whole["q00005"],
        "q00006": whole["q00006"].replace("middle part, ", ""),
        "q00007": whole["q00007"].replace("middle part, ", "middle part, middle part, "),
    }
    for index, (qid, text) in enumerate(shown.items()):
        ts = slack.seed_message(asked[qid].channel, text, bot=True, ts=f"400.00000{index}")
        call(slack, 2.6, "chat.postMessage", posted=ts, channel=asked[qid].channel, text=text)
    result = summarize(tracker, list(asked.values()), None, whole.__getitem__)
    assert result["answered"] == 3 and result["incomplete"] == 2
