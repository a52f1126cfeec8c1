"""Schemathesis hooks for scripts/fuzz-api: how to send the two request media types the
schemathesis serializers do not know (the trigger file's TOML, and NDJSON events), a rule the
OpenAPI 3.0 document cannot state, and the one 503 that is not a server error."""

import json
import re

import schemathesis


@schemathesis.serializer("application/toml")
def toml(ctx, value):
    # The body schema is a string: the trigger file's text, sent as it is.
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8") if isinstance(value, str) else json.dumps(value).encode()


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    # The schema describes the lines in order (an array of events): one JSON document per line.
    # Anything else (a negative case) is sent as one line, which the server must refuse.
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(item) + "\n" for item in items).encode("utf-8")


@schemathesis.hook
def filter_failure(ctx, failure, case, response):
    # A generated ?min_offset= is ahead of what the (nearly empty) log holds, so the read waits
    # engine.read_wait and answers the documented 503 `unavailable` ("the views have not applied
    # partition P offset O within …; retry"). That one answer is not a server error; every other
    # 5xx still fails the run.
    if response is None or response.status_code != 503 or not (case.query or {}).get("min_offset"):
        return True
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return True
    waited = error.get("code") == "unavailable" and error.get("message", "").startswith(
        "the views have not applied"
    )
    return not waited


# Free text in events (keys included) holds no C0 control character but tab and line breaks.
_FORBIDDEN_IN_KEYS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _clean_keys(value):
    if isinstance(value, dict):
        return {_FORBIDDEN_IN_KEYS.sub("", k): _clean_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_keys(v) for v in value]
    return value


def _money(value, found):
    """Every {amount, currency} object inside `value`."""
    if isinstance(value, dict):
        if set(value) == {"amount", "currency"} and isinstance(value["currency"], str):
            found.append(value)
        for v in value.values():
            _money(v, found)
    elif isinstance(value, list):
        for v in value:
            _money(v, found)
    return found


def _one_currency(event):
    if isinstance(event, dict):
        amounts = _money(event.get("data"), [])
        for m in amounts[1:]:
            m["currency"] = amounts[0]["currency"]


@schemathesis.hook
def map_case(ctx, case):
    # Two rules the document states in words, as OpenAPI 3.0 schemas cannot: the keys of a
    # free-form object hold no control character (`propertyNames` came with JSON Schema 2019),
    # and an event's amounts are all in one currency (a rule across fields). A valid request
    # (positive case) is made to follow them; negative cases are sent as generated.
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not isinstance(case.body, (dict, list)):
        return case
    case.body = _clean_keys(case.body)
    if case.operation.path == "/v1/events":
        for event in case.body if isinstance(case.body, list) else [case.body]:
            _one_currency(event)
    return case
