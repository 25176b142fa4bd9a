"""The yardstick: a Slack LLM bot written the way the common tutorial writes it.

Sync Bolt `App` with Bolt's default listener pool (5 threads), a blocking OpenAI call per question,
and history in a dict. HTTP mode is Bolt's built-in server (`app.start`); Socket Mode is the SDK's
built-in client. It reads the same environment variables as the real bot.

It reads the model's stream to the end before answering, holding its worker for as long as a
non-streaming call would (the model takes as long either way), and posts the answer in one message.
Not for production: the benchmark runs it beside the real bot to show what concurrency costs here.
"""

from __future__ import annotations

import os

from openai import OpenAI
from slack_bolt import App, Say
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient

SYSTEM_PROMPT = "You are a helpful support assistant."

llm = OpenAI(base_url=os.environ.get("OPENAI_BASE_URL"), api_key=os.environ["OPENAI_API_KEY"])
app = App(
    client=WebClient(
        token=os.environ["SLACK_BOT_TOKEN"],
        base_url=os.environ.get("SLACK_API_URL", "https://slack.com/api/"),
    ),
    signing_secret=os.environ.get("SLACK_SIGNING_SECRET"),
)
history: dict[str, list[dict[str, str]]] = {}


def ask_model(conversation: str, text: str) -> str:
    messages = history.setdefault(conversation, [])
    messages.append({"role": "user", "content": text})
    stream = llm.chat.completions.create(
        model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, *messages],  # type: ignore[list-item]
        stream=True,
    )
    answer = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    messages.append({"role": "assistant", "content": answer})
    return answer


@app.event("app_mention")
def on_mention(event: dict, say: Say) -> None:
    thread_ts = event.get("thread_ts") or event["ts"]
    say(text=ask_model(f"{event['channel']}:{thread_ts}", event["text"]), thread_ts=thread_ts)


@app.event("message")
def on_message(event: dict, say: Say) -> None:
    if event.get("channel_type") != "im" or event.get("bot_id") or event.get("subtype"):
        return
    thread_ts = event.get("thread_ts")
    say(text=ask_model(f"{event['channel']}:{thread_ts}", event["text"]), thread_ts=thread_ts)


if __name__ == "__main__":
    if os.environ.get("SLACK_APP_TOKEN"):
        SocketModeHandler(app, os.environ["SLACK_APP_TOKEN"]).start()
    else:
        app.start(port=int(os.environ.get("PORT", "3000")))
