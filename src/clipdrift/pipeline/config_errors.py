"""Validating a study config with errors a user can read: one short message per mistake (the
key, the problem, the allowed values, the closest known key for a typo), the validator's full
account in a file beside it. Parse time: no torch."""

from __future__ import annotations

import re
from pathlib import Path

from clipdrift.model.methods import METHODS
from clipdrift.pipeline.plan import StudyConfigError, check_study_config

SCHEMA_HINT = "every key is documented in workflow/schemas/config.schema.yaml"


def prepare_config(config: dict, schema_path: str | Path, detail_dir: str | Path | None = None) -> dict:
    """Validate ``config`` (in place: schema defaults filled in) and check it across keys.

    A schema violation raises :class:`StudyConfigError` with one short message: the key, the
    problem, the allowed values and, for an unknown key, the closest known one. The full
    validator output goes to a file in ``detail_dir`` (named in the message), not the terminal.
    """
    import yaml

    schema = with_method_names(yaml.safe_load(Path(schema_path).read_text()))
    problems = schema_problems(config, schema)
    if problems:
        message = problems[0] + (f"\n(and {len(problems) - 1} more problem(s) in the config)" if len(problems) > 1 else "")
        detail = _write_detail(problems, config, schema, detail_dir)
        raise StudyConfigError(message + f"\nFix it and rerun; {SCHEMA_HINT}." + (f" Details: {detail}" if detail else ""))
    from snakemake.utils import validate

    validate(config, str(schema_path), set_default=True)
    check_study_config(config)
    return config


def with_method_names(schema: dict) -> dict:
    """The schema with the names the method registry knows as the only values of a method
    (:data:`clipdrift.model.methods.METHODS`: the schema file does not list them)."""
    names = list(METHODS)
    schema["properties"]["methods"]["items"]["anyOf"][0]["enum"] = names
    schema["definitions"]["variant"]["properties"]["method"]["enum"] = names
    return schema


def schema_problems(config: dict, schema: dict) -> list[str]:
    """One readable sentence per schema violation, the most relevant first."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import relevance

    errors = sorted(Draft202012Validator(schema).iter_errors(config), key=relevance, reverse=True)
    errors.sort(key=lambda e: len(e.absolute_path))  # shallow (structural) problems first
    return [_in_variant(config, error) + _readable(error, schema) for error in errors]


def _in_variant(config: dict, error) -> str:
    """``variant 'lora-r4': `` when the problem lies inside a named variant of ``methods:``."""
    path = list(error.absolute_path)
    if len(path) < 2 or path[0] != "methods" or not isinstance(config.get("methods"), list):
        return ""
    entry = config["methods"][path[1]] if path[1] < len(config["methods"]) else None
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"variant {name!r}: " if isinstance(name, str) else ""


def _key(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the config"


def _subschema(schema: dict, path) -> dict:
    node = schema
    for part in path:
        node = node.get("items", {}) if isinstance(part, int) else node.get("properties", {}).get(part, {})
        node = _resolve_ref(schema, node["$ref"]) if "$ref" in node else node
        # a list of alternatives: the one that describes a mapping, when the path goes on into it
        mappings = [_resolve_ref(schema, alt["$ref"]) if "$ref" in alt else alt for alt in node.get("anyOf", [])]
        mappings = [alt for alt in mappings if alt.get("type") == "object"]
        node = mappings[0] if len(mappings) == 1 else node
    return node


def _resolve_ref(schema: dict, ref: str) -> dict:
    node = schema
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _readable(error, schema: dict) -> str:
    key, value, rule = _key(error.absolute_path), error.instance, error.validator
    if rule == "additionalProperties":
        return _renamed_key(error) or _unknown_keys(error, schema)
    if rule == "required":
        missing = [name for name in error.validator_value if name not in (value or {})]
        described = _described(schema, [*error.absolute_path, missing[0]])
        return f"config key {key} lacks the required key {missing[0]!r}: add it ({described})."
    if rule == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return f"config key {key} is {value!r}, which is not allowed: use one of {allowed}."
    if rule == "type":
        near = _near_miss(list(error.absolute_path), value)
        if near:
            return near
        allowed = _subschema(schema, error.absolute_path).get("enum")
        if allowed:  # e.g. a bare `off` that YAML reads as false
            choices = ", ".join(f"'{v}'" if isinstance(v, str) else str(v) for v in allowed)
            return f"config key {key} is {value!r} but must be one of {choices} (quote words YAML reads as booleans)."
        if error.validator_value == "boolean" and isinstance(value, str) and value.lower() in ("true", "false"):
            # `snakemake --config key=false` passes the string: Snakemake reads only True/False
            word = value.capitalize()
            return f"config key {key} is the string {value!r}: write {word} (--config {key}={word})."
        return (f"config key {key} is {value!r} ({_types(_json_type(value))}) but must be {_types(error.validator_value)}"
                f" ({_described(schema, error.absolute_path)}).")
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if rule in bounds:
        return f"config key {key} is {value!r} but must be {bounds[rule]} {error.validator_value}."
    if rule == "minItems":
        return f"config key {key} needs at least {error.validator_value} item(s), got {len(value)}."
    if rule == "uniqueItems":
        return f"config key {key} lists the same value twice ({value}): list each value once."
    if rule == "pattern":
        return (f"config key {key} is {value!r}, which is not of the form {error.validator_value} "
                f"({_described(schema, error.absolute_path)}).")
    if rule in ("anyOf", "oneOf"):
        # report what went wrong inside the alternative(s) of the value's own type (a mapping is
        # judged as a mapping), the most specific problem first
        alternatives: dict[int, list] = {}
        for inner in error.context:
            alternatives.setdefault(inner.relative_schema_path[0], []).append(inner)
        fitting = [e for errors in alternatives.values()
                   if not any(e.validator == "type" and not e.relative_path for e in errors) for e in errors]
        specific = [e for e in fitting if e.validator not in ("anyOf", "oneOf")] or [
            e for e in error.context if e.validator not in ("type", "anyOf", "oneOf")]
        if specific:
            return _readable(max(specific, key=lambda e: len(e.absolute_path)), schema)
        return (f"config key {key} is {value!r}, which is none of the allowed forms "
                f"({_described(schema, error.absolute_path)}).")
    return f"config key {key}: {error.message}."


def _near_miss(path: list, value) -> str | None:
    """The right spelling for a value written in a shape many would first write it in."""
    if path == ["zeroshot"] and isinstance(value, list):
        return (f"config key zeroshot is a list ({value!r}): the held-out suite is zeroshot.tasks - write "
                f"zeroshot: {{tasks: [{', '.join(map(str, value))}]}}.")
    if len(path) == 2 and path[0] == "datasets" and isinstance(value, str):
        if "/" in value or "\\" in value:
            name = re.sub(r"[^a-z0-9._-]+", "-", Path(value.rstrip("/\\")).name.lower()).strip("-._") or "mine"
            return (f"config key datasets[{path[1]}] is the path {value!r}: a dataset is a mapping with a name - write "
                    f"{{name: {name}, root: {value}, epochs: 10}}.")
        return (f"config key datasets[{path[1]}] is {value!r}: a dataset is a mapping - write "
                f"{{name: {value}, epochs: 10}}.")
    return None


# Keys of older configs that a newer one took over, with what to write instead.
RENAMED_KEYS = {("zeroshot", "dataset"): lambda value: f"zeroshot.dataset is now zeroshot.tasks: write tasks: [{value}] "
                                                       "(a list: the held-out suite)."}


def _renamed_key(error) -> str | None:
    for name in error.instance:
        rename = RENAMED_KEYS.get((*error.absolute_path, name))
        if rename is not None:
            return f"config key {_key([*error.absolute_path, name])!r}: " + rename(error.instance[name])
    return None


def _unknown_keys(error, schema: dict) -> str:
    known = list(_subschema(schema, error.absolute_path).get("properties", {}))
    unknown = [name for name in error.instance if name not in known]
    name = unknown[0]
    where = _key([*error.absolute_path, name])
    import difflib

    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    suggestion = f"did you mean {_key([*error.absolute_path, close[0]])!r}? " if close else ""
    return (f"config key {where!r} is not a setting of this workflow: {suggestion}"
            f"known keys here: {', '.join(known)}.")


def _types(expected) -> str:
    names = {"array": "a list", "object": "a mapping", "string": "a string", "integer": "an integer",
             "number": "a number", "boolean": "true or false", "null": "null"}
    expected = expected if isinstance(expected, list) else [expected]
    return " or ".join(names.get(t, t) for t in expected)


def _json_type(value) -> str:
    for name, kind in (("boolean", bool), ("integer", int), ("number", float), ("string", str), ("array", list),
                       ("object", dict)):
        if isinstance(value, kind):
            return name
    return "null"


def _described(schema: dict, path) -> str:
    path = list(path)
    description = ""
    while path and not description:  # a list item is described by its list
        description = " ".join(str(_subschema(schema, path).get("description", "")).split())
        path = path[:-1] if isinstance(path[-1], int) else []
    return description.rstrip(".") or SCHEMA_HINT


def _write_detail(problems: list[str], config: dict, schema: dict, detail_dir) -> str | None:
    """The validator's full account, for the curious; its path, or None if it cannot be written."""
    if detail_dir is None:
        return None
    from jsonschema import Draft202012Validator

    try:
        path = Path(detail_dir) / "config-errors.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        full = "\n\n".join(str(error) for error in Draft202012Validator(schema).iter_errors(config))
        path.write_text("\n".join(problems) + "\n\n" + full + "\n")
        return str(path)
    except OSError:
        return None
