"""manifest.yml is a valid Slack app manifest and asks for every event and scope the bot needs.

Validated against Slack's official JSON schema in ../shared/slack/manifest-schema (or the
directory named by SLACK_MANIFEST_SCHEMA_DIR). That schema refers to its versioned files in
schemas/ by URL; a `referencing.Registry` maps those URLs to the local files, so nothing is
fetched from the network.
"""

from __future__ import annotations

import ast
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "manifest.yml"
SHARED_SLACK = Path(__file__).resolve().parents[2] / "shared" / "slack"

BOT_EVENTS = {"app_mention", "message.channels", "message.groups", "message.im", "message.mpim"}
BOT_SCOPES = {
    "app_mentions:read",
    "chat:write",
    "channels:history",
    "groups:history",
    "im:history",
    "mpim:history",
    "users:read",
    "reactions:write",
}
# Web API methods the bot calls; their bot scopes are read from ../shared/slack/methods/*.json.
METHODS_CALLED = (
    "chat.postMessage",
    "chat.update",
    "chat.postEphemeral",
    "chat.startStream",
    "chat.appendStream",
    "chat.stopStream",
    "assistant.threads.setStatus",
    "reactions.add",
    "reactions.remove",
    "conversations.replies",
    "conversations.history",
    "users.info",
)


def schema_dir() -> Path:
    configured = os.environ.get("SLACK_MANIFEST_SCHEMA_DIR")
    directory = Path(configured) if configured else SHARED_SLACK / "manifest-schema"
    if not (directory / "manifest.schema.json").is_file():
        pytest.fail(
            f"Slack's manifest schema was not found at {directory}/manifest.schema.json: "
            "check out the shared folder beside the repository, or set "
            "SLACK_MANIFEST_SCHEMA_DIR to the directory holding manifest.schema.json and schemas/."
        )
    return directory


def _remote_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            yield ref
        for value in node.values():
            yield from _remote_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _remote_refs(value)


def load_validator() -> jsonschema.protocols.Validator:
    directory = schema_dir()
    root = json.loads((directory / "manifest.schema.json").read_text(encoding="utf-8"))
    registry: Registry = Registry()
    for url in sorted(set(_remote_refs(root))):
        local = directory / "schemas" / url.rsplit("/", 1)[-1]
        if not local.is_file():
            pytest.fail(f"manifest.schema.json refers to {url}, but {local} does not exist")
        contents = json.loads(local.read_text(encoding="utf-8"))
        registry = registry.with_resource(url, Resource.from_contents(contents, DRAFT7))
    cls = jsonschema.validators.validator_for(root)
    cls.check_schema(root)
    return cls(root, registry=registry)


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    return load_validator()


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))


def test_manifest_validates_against_slacks_schema(
    validator: jsonschema.protocols.Validator, manifest: dict[str, Any]
) -> None:
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    details = [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        + "".join(f"\n    {c.message}" for c in (e.context or [])[:6])
        for e in errors
    ]
    assert not errors, "manifest.yml is not a valid Slack manifest:\n" + "\n".join(details)


def test_schema_rejects_a_misspelt_setting(
    validator: jsonschema.protocols.Validator, manifest: dict[str, Any]
) -> None:
    """Guards the check above: the versioned schemas really are resolved and applied."""
    broken = copy.deepcopy(manifest)
    broken["settings"]["socket_mode"] = True
    assert not validator.is_valid(broken)


def test_manifest_subscribes_to_every_event_the_bot_handles(manifest: dict[str, Any]) -> None:
    subscribed = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert BOT_EVENTS <= subscribed, f"missing bot_events: {sorted(BOT_EVENTS - subscribed)}"


def test_manifest_requests_every_scope_the_bot_needs(manifest: dict[str, Any]) -> None:
    granted = set(manifest["oauth_config"]["scopes"]["bot"])
    assert BOT_SCOPES <= granted, f"missing bot scopes: {sorted(BOT_SCOPES - granted)}"


def methods_dir() -> Path:
    """Slack's Web API method reference, beside the manifest schema in ../shared/slack."""
    methods = schema_dir().parent / "methods"
    return methods if methods.is_dir() else SHARED_SLACK / "methods"


def test_every_method_the_bot_names_is_among_those_checked() -> None:
    """METHODS_CALLED is kept by hand; a method named anywhere in bot/ must be in it, so that a
    new call cannot need a scope the manifest lacks unnoticed."""
    known = {reference.stem for reference in methods_dir().glob("*.json")}
    if not known:
        pytest.fail(f"Slack's Web API method reference was not found in {methods_dir()}")
    named = set()
    for source in (Path(__file__).resolve().parents[1] / "bot").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
                named.add(node.value)
    assert "chat.postMessage" in named  # the search itself works
    assert named <= set(METHODS_CALLED), f"not checked: {sorted(named - set(METHODS_CALLED))}"


@pytest.mark.parametrize("method", METHODS_CALLED)
def test_manifest_grants_the_scopes_of_each_method_called(manifest: dict[str, Any], method: str) -> None:
    reference = methods_dir() / f"{method}.json"
    if not reference.is_file():
        pytest.fail(f"Slack's Web API method reference was not found at {reference}")
    needed = set(json.loads(reference.read_text(encoding="utf-8"))["scope"]["bot"])
    granted = set(manifest["oauth_config"]["scopes"]["bot"])
    # Methods such as conversations.replies list one scope per conversation type; the bot works
    # in all of them, so it needs every one.
    assert needed <= granted, f"{method} needs {sorted(needed - granted)}"


def test_manifest_uses_socket_mode_without_a_request_url(manifest: dict[str, Any]) -> None:
    settings = manifest["settings"]
    assert settings["socket_mode_enabled"] is True
    assert "request_url" not in settings["event_subscriptions"]


def test_manifest_enables_interactivity_for_the_feedback_buttons(manifest: dict[str, Any]) -> None:
    interactivity = manifest["settings"]["interactivity"]
    assert interactivity["is_enabled"] is True
    assert "request_url" not in interactivity  # Socket Mode delivers the clicks
