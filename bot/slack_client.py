"""The Slack Web API client every part of the bot uses: slack_sdk's, with one gap closed.

A 200 whose body is plain text (a proxy's or a captive portal's, not Slack's) makes slack_sdk's
own check of the answer call `.get` on a str and raise AttributeError, which no caller expects
of a Slack call. It is read here as what it is: a failed call, error `http_200`. Any other status
with a plain-text body likewise reads as error `http_<status>` (its text, left in place of
Slack's answer, made reading the error raise AttributeError).
"""

from __future__ import annotations

from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse


class SlackClient(AsyncWebClient):
    async def api_call(self, api_method: str, **kwargs: Any) -> AsyncSlackResponse:  # type: ignore[override]
        try:
            return await super().api_call(api_method, **kwargs)
        except AttributeError as error:
            if (unchecked := _answer_being_checked(error)) is None:
                raise  # not slack_sdk's check: a bug, and it should show as one
            answer = failed_answer(
                self, api_method, unchecked.http_verb, unchecked.status_code, unchecked.headers
            )
            raise SlackApiError(f"{api_method} failed: http_{unchecked.status_code}", answer) from None
        except SlackApiError as error:
            # A plain-text error page (a proxy's 503): its text in place of Slack's answer makes
            # every reader of the error (`.get("error")`, `["error"]`) raise AttributeError.
            text = error.response
            if not (isinstance(text, AsyncSlackResponse) and isinstance(text.data, str)):
                raise
            answer = failed_answer(self, api_method, text.http_verb, text.status_code, text.headers)
            raise SlackApiError(f"{api_method} failed: http_{text.status_code}", answer) from None


def failed_answer(
    client: AsyncWebClient, method: str, http_verb: str, status: int, headers: Any
) -> AsyncSlackResponse:
    """An answer in Slack's shape for one that was not Slack's: error `http_<status>`."""
    return AsyncSlackResponse(
        client=client,
        http_verb=http_verb,
        api_url=method,
        req_args={},
        data={"ok": False, "error": f"http_{status}"},
        headers=dict(headers or {}),
        status_code=int(status or 0),
    )


def _answer_being_checked(error: AttributeError) -> AsyncSlackResponse | None:
    """The answer slack_sdk was checking when `error` came from its `validate`, else None."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is None or frame.tb_frame.f_code.co_name != "validate":
        return None
    answer = frame.tb_frame.f_locals.get("self")
    return answer if isinstance(answer, AsyncSlackResponse) else None
