"""What the model sees: the system prompt, then the conversation's recent turns with their authors."""

from __future__ import annotations

from bot.llm import ChatMessage
from bot.store import Store, ThreadKey, Turn

# How many stored turns a prompt may draw on. A token budget replaces this count later;
# reading only the tail keeps a turn's cost independent of the thread's length.
RECENT_TURNS = 60


def build_messages(system_prompt: str, turns: list[Turn]) -> list[ChatMessage]:
    """Chat messages for the model, oldest first; each user turn is prefixed with its author."""
    messages: list[ChatMessage] = [{"role": "system", "content": system_prompt}]
    for turn in turns:
        if turn.role == "assistant":
            messages.append({"role": "assistant", "content": turn.text})
        else:
            author = turn.name or turn.user or "someone"
            messages.append({"role": "user", "content": f"{author}: {turn.text}"})
    return messages


class ContextBuilder:
    """Builds the prompt for a conversation from what the store holds."""

    def __init__(self, store: Store, system_prompt: str) -> None:
        self.store = store
        self.system_prompt = system_prompt

    async def prompt_for(self, key: ThreadKey) -> list[ChatMessage]:
        turns = await self.store.recent_turns(key, RECENT_TURNS)
        return build_messages(self.system_prompt, turns)
