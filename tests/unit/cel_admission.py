"""The generated CRD's CEL rules, run by a CEL evaluator nobody here wrote (cel-python), as the API server
runs them: each rule at its schema node, on the value found there.

Only the Kubernetes library function our rules use (``isQuantity``) is supplied here. The API server also
type-checks rules against the schema and estimates their cost when the CRD is installed; that part only the
real server does (tests/operator).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celtypes

from nim_operator.api.crd import build_crd

# Kubernetes' quantity grammar: a signed decimal number with an optional binary, decimal or exponent suffix.
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[munkMGTPE])?$")


def _is_quantity(value: celtypes.Value) -> celtypes.BoolType:
    return celtypes.BoolType(isinstance(value, celtypes.StringType) and bool(_QUANTITY.match(str(value))))


@dataclass(frozen=True)
class Rule:
    """One CEL rule and the schema node it sits on, by path from the spec (``spec.storage.pvc``)."""

    path: str
    node: dict[str, Any]
    rule: str
    message: str


def spec_schema() -> dict[str, Any]:
    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def rules_of(node: dict[str, Any], path: str = "spec") -> Iterator[Rule]:
    """Every rule in the schema, depth first, with the path of its node ([] for an array's items)."""
    for validation in node.get("x-kubernetes-validations", []):
        yield Rule(path, node, validation["rule"], validation["message"])
    for name, child in (node.get("properties") or {}).items():
        yield from rules_of(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from rules_of(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from rules_of(node["additionalProperties"], f"{path}{{}}")


class Evaluator:
    """Compiles each rule once; ``evaluate`` raises celpy.CELEvalError where the API server reports an error."""

    def __init__(self) -> None:
        self.env = celpy.Environment()
        self._programs: dict[str, celpy.Runner] = {}

    def evaluate(self, rule: str, value: Any) -> celtypes.Value:
        program = self._programs.get(rule)
        if program is None:
            program = self.env.program(self.env.compile(rule), functions={"isQuantity": _is_quantity})
            self._programs[rule] = program
        result: celtypes.Value = program.evaluate({"self": celpy.json_to_cel(value)})
        return result

    def violations(self, node: dict[str, Any], value: Any, path: str = "spec") -> list[str]:
        """What the API server would refuse in ``value`` (a document under ``node``), as "path: message"."""
        out: list[str] = []
        for validation in node.get("x-kubernetes-validations", []):
            try:
                ok = self.evaluate(validation["rule"], value)
            except celpy.CELEvalError as err:
                out.append(f"{path}: error evaluating {validation['rule']!r}: {err.args[0]}")
                continue
            if not isinstance(ok, celtypes.BoolType):
                out.append(f"{path}: {validation['rule']!r} gave {ok!r}, not a bool")
            elif not ok:
                out.append(f"{path}: {validation['message']}")
        if isinstance(value, dict):
            for name, child in (node.get("properties") or {}).items():
                if name in value:
                    out.extend(self.violations(child, value[name], f"{path}.{name}"))
            extra = node.get("additionalProperties")
            if isinstance(extra, dict):
                for key, item in value.items():
                    out.extend(self.violations(extra, item, f"{path}.{key}"))
        if isinstance(value, list) and isinstance(node.get("items"), dict):
            for i, item in enumerate(value):
                out.extend(self.violations(node["items"], item, f"{path}[{i}]"))
        return out


def example(node: dict[str, Any], *, full: bool) -> Any:
    """A value the schema allows: every property when ``full``, only the required ones otherwise."""
    if node.get("x-kubernetes-int-or-string"):
        return "1"
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return {}
    kind = node.get("type")
    if "enum" in node:
        return node["enum"][0]
    if kind == "string":
        return "x"
    if kind == "integer":
        return max(int(node.get("minimum", 1)), 1)
    if kind == "boolean":
        return True
    if kind == "array":
        return [example(node["items"], full=full)]
    if kind == "object" and "properties" in node:
        required = set(node.get("required", []))
        return {
            name: example(child, full=full) for name, child in node["properties"].items() if full or name in required
        }
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return {"k": example(node["additionalProperties"], full=full)}
    return {}


def optional_paths(node: dict[str, Any], value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths (keys and list indexes) of every optional key present in ``value``, nested ones included."""
    if isinstance(value, dict) and "properties" in node:
        required = set(node.get("required", []))
        for name, child in node["properties"].items():
            if name not in value:
                continue
            if name not in required:
                yield (*prefix, name)
            yield from optional_paths(child, value[name], (*prefix, name))
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            yield from optional_paths(node["items"], item, (*prefix, i))


def boolean_paths(node: dict[str, Any], value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths of every boolean in ``value``, so each can be tried false as well."""
    if node.get("type") == "boolean":
        yield prefix
    elif isinstance(value, dict) and "properties" in node:
        for name, child in node["properties"].items():
            if name in value:
                yield from boolean_paths(child, value[name], (*prefix, name))
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            yield from boolean_paths(node["items"], item, (*prefix, i))
