"""The vendors' own API definitions, and a check of each request against them.

``contracts/`` holds subsets of the vendors' published OpenAPI documents (Zendesk Support,
Jira Cloud platform v3, HubSpot CRM v3 contacts and tickets), cut to the operations notify
uses; ``contracts/README.md`` names each source and licence. A stand-in given a ``Contract``
checks every request it receives against it before it answers: the operation must exist (method
and path; Zendesk's ``.json`` suffix is the same operation), the JSON body must match the
operation's request schema, and each declared query or path parameter its type. A request that
breaks the contract is answered 400, as the vendor would, and kept in ``violations``, so a
change to notify that breaks a vendor's contract fails the tests.

OpenAPI 3.0 schemas are JSON Schema with a few differences; ``nullable: true`` is turned into a
``null`` type, the rest (``example``, ``x-`` keys) is ignored by the validator.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator

HERE = Path(__file__).resolve().parent / "contracts"


@dataclass(frozen=True)
class Violation:
    method: str
    path: str
    problem: str


class Contract:
    """One vendor's operations, from one or more subset documents."""

    def __init__(self, *names: str) -> None:
        self.documents = [json.loads((HERE / f"{name}.subset.json").read_text()) for name in names]
        self.violations: list[Violation] = []

    @cached_property
    def operations(self) -> list[tuple[re.Pattern[str], str, dict, dict]]:
        """(path pattern, method, operation, its document) for every operation."""
        found = []
        for document in self.documents:
            for template, item in document["paths"].items():
                pattern = re.compile(
                    "^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + r"(\.json)?$"
                )
                for method, operation in item.items():
                    if isinstance(operation, dict) and method != "parameters":
                        found.append((pattern, method.upper(), operation, document))
        return found

    def check(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> str | None:
        """None when the request keeps the contract; else what is wrong (also recorded)."""
        problem = self._problem(method, path, query, body)
        if problem is not None:
            self.violations.append(Violation(method, path, problem))
        return problem

    def covers(self, method: str, path: str) -> bool:
        return any(p.match(path) and m == method for p, m, _, _ in self.operations)

    def _problem(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> str | None:
        matches = [(op, doc) for p, m, op, doc in self.operations if p.match(path) and m == method]
        if not matches:
            return f"{method} {path} is not an operation of the vendor's definition"
        operation, document = matches[0]
        for parameter in _parameters(operation, document):
            problem = _parameter_problem(parameter, query, document)
            if problem:
                return problem
        schema = (
            operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        ).get("schema")
        if schema is None:
            return None
        validator = Draft7Validator({"allOf": [schema], "components": _components(document)})
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path) or "(body)"
            return f"request body at {where}: {errors[0].message[:300]}"
        return None


def _parameters(operation: dict, document: dict) -> list[dict]:
    resolved = []
    for parameter in operation.get("parameters", []):
        if "$ref" in parameter:
            parameter = _resolve(parameter["$ref"], document)
        resolved.append(parameter)
    return resolved


def _parameter_problem(parameter: dict, query: dict[str, list[str]], document: dict) -> str | None:
    if parameter.get("in") != "query":
        return None
    name = parameter["name"]
    values = query.get(name)
    if values is None:
        return f"query parameter {name} is required" if parameter.get("required") else None
    schema = _nullable(parameter.get("schema") or {})
    if "$ref" in schema:
        schema = _resolve(schema["$ref"], document)
    item_schema = schema.get("items", {}) if schema.get("type") == "array" else schema
    parts = [p for v in values for p in (v.split(",") if schema.get("type") == "array" else [v])]
    for value in parts:
        typed = _typed(value, item_schema.get("type"))
        if typed is None or not Draft7Validator(item_schema).is_valid(typed):
            return f"query parameter {name}={value!r} does not match {item_schema}"
    return None


def _typed(value: str, kind: str | None) -> Any:
    if kind == "integer":
        return int(value) if re.fullmatch(r"-?\d+", value) else None
    if kind == "number":
        try:
            return float(value)
        except ValueError:
            return None
    if kind == "boolean":
        return {"true": True, "false": False}.get(value)
    return value


def _resolve(reference: str, document: dict) -> dict:
    node: Any = document
    for part in reference.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _components(document: dict) -> dict:
    return _nullable(document.get("components", {}))


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` as JSON Schema's ``null`` type, all the way down."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable(value) for key, value in node.items()}
    if out.pop("nullable", False) is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        elif "$ref" in out or "allOf" in out or "oneOf" in out or "anyOf" in out:
            out = {"anyOf": [out, {"type": "null"}]}
    return out
