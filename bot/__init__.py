"""slack-support-bot: a Slack support bot that answers with an LLM and keeps conversations in Redis."""
