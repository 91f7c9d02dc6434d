"""Security events against an independent implementation of the OCSF schema: the pydantic models of
PyPI `ocsf-emitter` (OCSF 1.5.0, generated from the OCSF metaschema with ocsf-lib) and its
`validate()` (required attributes, types, enums, class and category identity, type_uid, the schema
version).

The events come from tests/events.rs, which runs before this in scripts/test.sh and leaves them
in <target>/tmp/event-samples: ocsf.jsonl holds one event of every kind the code can emit, built
and written by the real event writer (`every_event_kind_written_through_the_event_writer`), and
ocsf-sidecar-*.jsonl what real sidecars emitted for real requests (denials, rate limits, TLS
refusals, policy changes, WAF findings in both modes, JWT failures, and the DoS defences' aggregated
refusals: connections closed at accept, at the header and idle timeouts, requests shed).

ocsf-emitter's models accept attributes they do not declare (pydantic `extra='allow'`) and leave
profiles out, so two checks are added here: every attribute must be one the models declare at its
place, or one of the profiles the event names in `metadata.profiles`; the profiles' attributes are
listed below from the OCSF 1.5.0 profile definitions, the only schema text this test holds.
"""

import json
import os
import pathlib
import types
import typing

import pydantic
import pytest
from ocsf_emitter import _models, defaults
from ocsf_emitter.validate import validate

ROOT = pathlib.Path(__file__).resolve().parents[2]

# OCSF 1.5.0 profiles: the attributes each adds to a class, and for objects the model that types
# them (None: checked by the table below instead).
PROFILES = {
    "security_control": {
        "action": str,
        "action_id": int,
        "disposition": str,
        "disposition_id": int,
        "firewall_rule": None,
        "attacks": list,
        "authorizations": list,
        "is_alert": bool,
        "malware": list,
        "policy": _models.Policy,
    },
    "host": {"actor": _models.Actor, "device": _models.Device},
}
# firewall_rule (OCSF 1.5.0): the `rule` object's attributes and its own.
FIREWALL_RULE = set(_models.Rule.model_fields) | {
    "condition",
    "duration",
    "match_details",
    "match_location",
    "rate_limit",
    "sensitivity",
}
# security_control's enums (OCSF 1.5.0), for the values the events use and their captions.
ACTIONS = {0: "Unknown", 1: "Allowed", 2: "Denied", 3: "Observed", 4: "Modified", 99: "Other"}
DISPOSITIONS = {1: "Allowed", 2: "Blocked", 15: "Detected"}
# The classes' "at least one of" constraints, which the generated models do not encode.
AT_LEAST_ONE = {
    4002: ["http_request", "http_response"],
    4001: ["src_endpoint", "dst_endpoint"],
}


def samples_dir():
    return pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "tmp" / "event-samples"


def samples(name):
    path = samples_dir() / name
    if not path.exists():
        message = f"{path} is missing: run `cargo test --test events` first (scripts/test.sh does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return [json.loads(line) for line in path.read_text().splitlines()]


def nested_models(annotation):
    """The pydantic models an attribute's annotation names (through `X | None` and `list[X]`)."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        return [m for a in typing.get_args(annotation) for m in nested_models(a)]
    return []


def undeclared(value, model, path):
    """Attributes of `value` that `model` does not declare, recursively, as dotted paths."""
    found = []
    for key, item in value.items():
        field = model.model_fields.get(key)
        if field is None:
            found.append(f"{path}{key}")
            continue
        if key in ("unmapped", "data"):  # free-form by definition
            continue
        models = nested_models(field.annotation)
        if not models:
            continue
        for element in item if isinstance(item, list) else [item]:
            if isinstance(element, dict):
                found += undeclared(element, models[0], f"{path}{key}.")
    return found


def check(event):
    """Every problem with one event, as strings (empty: valid)."""
    spec = defaults.class_spec_by_uid(event.get("class_uid"))
    if spec is None:
        return [f"class_uid {event.get('class_uid')} is not an OCSF 1.5.0 class"]
    model = getattr(_models, spec.model_name)
    profiles = event.get("metadata", {}).get("profiles", [])
    profile_attrs = {k: t for p in profiles for k, t in PROFILES.get(p, {}).items()}
    problems = [f"unknown profile {p}" for p in profiles if p not in PROFILES]
    core = {k: v for k, v in event.items() if k not in profile_attrs}
    try:
        validate(model.model_validate(core))
    except Exception as e:  # InvalidFindingError or pydantic's ValidationError
        problems.append(f"{e}: {getattr(e, 'field_errors', '')}")
        return problems
    problems += [f"not an attribute of {spec.class_name}: {p}" for p in undeclared(core, model, "")]
    for key, kind in profile_attrs.items():
        if key not in event:
            continue
        value = event[key]
        if kind is None:
            extra = set(value) - FIREWALL_RULE
            if extra:
                problems.append(f"firewall_rule: not attributes of the object: {sorted(extra)}")
            _models.Rule.model_validate(value)
        elif isinstance(kind, type) and issubclass(kind, pydantic.BaseModel):
            kind.model_validate(value)
            problems += [f"{key}.{p}" for p in undeclared(value, kind, "")]
        elif not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            problems.append(f"{key}: expected {kind.__name__}, got {value!r}")
    if "action_id" in event and ACTIONS.get(event["action_id"]) != event.get("action"):
        problems.append(f"action {event.get('action')!r} for action_id {event['action_id']}")
    if "disposition_id" in event and DISPOSITIONS.get(event["disposition_id"]) != event.get("disposition"):
        problems.append(f"disposition {event.get('disposition')!r} for {event['disposition_id']}")
    for attribute in ("action_id", "disposition_id", "firewall_rule"):
        if attribute in event and "security_control" not in profiles:
            problems.append(f"{attribute} without the security_control profile")
    if "actor" in event and "actor" not in model.model_fields and "host" not in profiles:
        problems.append("actor without the host profile")
    wanted = AT_LEAST_ONE.get(spec.class_uid)
    if wanted and not any(k in event for k in wanted):
        problems.append(f"{spec.class_name} needs at least one of {wanted}")
    return problems


def test_every_event_kind_is_valid_ocsf_1_5():
    events = samples("ocsf.jsonl")
    assert len(events) >= 11, events
    failures = {e["message"]: p for e in events if (p := check(e))}
    assert not failures, json.dumps(failures, indent=2)
    classes = {(e["class_uid"], e["activity_id"]) for e in events}
    assert (4001, 5) in classes, "TLS refusals: Network Activity, Refuse"
    assert (4001, 2) in classes, "connections closed at a deadline: Network Activity, Close"
    assert {c for c, _ in classes} == {4001, 4002, 3004}, classes
    dos = [e for e in events if e.get("firewall_rule", {}).get("category") == "dos"]
    assert {e["firewall_rule"]["name"] for e in dos} == {
        "connection_limit", "source_limit", "header_timeout", "idle_timeout", "body_timeout", "send_timeout", "shed",
        "rapid_reset", "memory_shed", "memory_cut", "memory_limit", "memory_idle",
    }, dos
    # Many refusals in one event: OCSF's count and time span.
    assert all(e["count"] > 1 and e["start_time"] <= e["end_time"] for e in dos), dos


@pytest.mark.parametrize(
    "name",
    [
        "ocsf-sidecar-denials.jsonl",
        "ocsf-sidecar-waf-jwt.jsonl",
        "ocsf-sidecar-dos.jsonl",
        "ocsf-sidecar-detect-audit-aggregates.jsonl",
    ],
)
def test_what_real_sidecars_emitted_is_valid_ocsf_1_5(name):
    events = samples(name)
    assert events
    failures = {e["message"]: p for e in events if (p := check(e))}
    assert not failures, json.dumps(failures, indent=2)


def test_the_check_finds_what_the_schema_forbids():
    """The check is not vacuous: each mistake the events once had is caught."""
    events = samples("ocsf.jsonl")
    http = next(e for e in events if e["class_uid"] == 4002 and "http_response" in e)
    tls = next(e for e in events if e["class_uid"] == 4001)
    policy = next(e for e in events if e["class_uid"] == 3004)

    def broken(event, change):
        event = json.loads(json.dumps(event))
        change(event)
        return check(event)

    # A tls object without its required version (the old TLS refusal).
    assert broken(tls, lambda e: e.update(tls={"expected_identity": "spiffe://x"}))
    # An attribute the object does not have, inside a declared object.
    assert broken(http, lambda e: e["http_request"].update(expected_identity="x"))
    # HTTP Activity with neither request nor response (the old policy and certificate events).
    assert broken(http, lambda e: [e.pop("http_request"), e.pop("http_response")])
    # An activity the class does not define, and a type_uid that does not follow from it.
    assert broken(http, lambda e: e.update(activity_id=9, type_uid=400209))
    assert broken(http, lambda e: e.update(type_uid=400299))
    # Profile attributes without the profile.
    assert broken(http, lambda e: e["metadata"].update(profiles=[]))
    # The schema version the events declared before.
    assert broken(policy, lambda e: e["metadata"].update(version="1.3.0"))
    # A status_id outside the enum.
    assert broken(policy, lambda e: e.update(status_id=7))
