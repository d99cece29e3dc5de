"""Custom resources validated as strictly as the API server would, against CRD fixtures.

kubernetes-validate knows only Kubernetes' own kinds; the CRD schemas (copied from
../shared/crds, see tests/fixtures/crds/README.md) cover the rest.
"""

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parents[1] / "fixtures" / "crds"


# What a custom resource's metadata may carry here: the CRD schemas say only
# `type: object`, the API server checks ObjectMeta itself.
OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strict(schema: Any) -> Any:
    """A structural schema as the API server applies it with strict field validation:
    an object with `properties` and neither `additionalProperties` nor
    `x-kubernetes-preserve-unknown-fields` refuses unknown fields (the server would
    prune them, and `kubectl apply` refuses them); int-or-string is either."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if schema.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
        result.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


def crd_validators(directory: Path = CRDS) -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> a strict validator of each served CRD version in `directory`."""
    validators = {}
    for path in sorted(directory.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        for version in crd["spec"]["versions"]:
            if not version.get("served"):
                continue
            schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            schema["properties"]["metadata"] = OBJECT_META
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
            api_version = f"{crd['spec']['group']}/{version['name']}"
            validator_class = jsonschema.validators.validator_for(
                schema, jsonschema.Draft7Validator
            )
            validators[(api_version, crd["spec"]["names"]["kind"])] = validator_class(schema)
    return validators


VALIDATORS = crd_validators()


def crd_errors(obj: dict[str, Any]) -> list[str]:
    validator = VALIDATORS.get((obj.get("apiVersion", ""), obj.get("kind", "")))
    if validator is None:
        return [f"no CRD schema for {obj.get('apiVersion')} {obj.get('kind')}"]
    return [
        f"{obj['kind']} {obj['metadata'].get('name')}: "
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(obj)
    ]
