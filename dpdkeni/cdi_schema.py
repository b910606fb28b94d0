"""A JSON schema for Container Device Interface specs (cdiVersion 0.5 to 0.8; 0.5 differs from 0.6 only by the
annotations 0.6 added), written from the CDI SPEC.md:
``cdiVersion``, ``kind`` (``vendor/class``), ``devices`` (at least one, each a ``name`` and ``containerEdits``),
optional spec-level ``containerEdits`` and ``annotations``; edits are ``env``, ``deviceNodes``, ``mounts``,
``hooks`` (and ``intelRdt``, ``additionalGIDs`` from 0.7)."""
from __future__ import annotations

_NAME = r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$"
_STRINGS = {"type": "array", "items": {"type": "string"}}

SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "CDI spec",
    "type": "object",
    "required": ["cdiVersion", "kind", "devices"],
    "additionalProperties": False,
    "properties": {
        "cdiVersion": {"type": "string", "pattern": r"^0\.([5-9]|[1-9][0-9])\.[0-9]+$"},
        "kind": {"type": "string",
                 "pattern": r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*"
                            r"/[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$"},
        "annotations": {"$ref": "#/definitions/annotations"},
        "devices": {"type": "array", "minItems": 1, "items": {"$ref": "#/definitions/device"}},
        "containerEdits": {"$ref": "#/definitions/containerEdits"},
    },
    "definitions": {
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "device": {
            "type": "object", "required": ["name", "containerEdits"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": _NAME},
                "annotations": {"$ref": "#/definitions/annotations"},
                "containerEdits": {"$ref": "#/definitions/containerEdits"},
            },
        },
        "containerEdits": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "env": {"type": "array", "items": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*=.*$"}},
                "deviceNodes": {"type": "array", "items": {"$ref": "#/definitions/deviceNode"}},
                "mounts": {"type": "array", "items": {"$ref": "#/definitions/mount"}},
                "hooks": {"type": "array", "items": {"$ref": "#/definitions/hook"}},
                "intelRdt": {"type": "object"},
                "additionalGids": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            },
        },
        "deviceNode": {
            "type": "object", "required": ["path"], "additionalProperties": False,
            "properties": {
                "path": {"type": "string", "pattern": "^/"},
                "hostPath": {"type": "string", "pattern": "^/"},
                "type": {"enum": ["b", "c", "u", "p"]},
                "major": {"type": "integer", "minimum": 0},
                "minor": {"type": "integer", "minimum": 0},
                "fileMode": {"type": "integer", "minimum": 0},
                "permissions": {"type": "string", "pattern": "^[rwm]{0,3}$"},
                "uid": {"type": "integer", "minimum": 0},
                "gid": {"type": "integer", "minimum": 0},
            },
        },
        "mount": {
            "type": "object", "required": ["hostPath", "containerPath"], "additionalProperties": False,
            "properties": {
                "hostPath": {"type": "string"},
                "containerPath": {"type": "string", "pattern": "^/"},
                "type": {"type": "string"},
                "options": _STRINGS,
            },
        },
        "hook": {
            "type": "object", "required": ["hookName", "path"], "additionalProperties": False,
            "properties": {
                "hookName": {"enum": ["prestart", "createRuntime", "createContainer", "startContainer",
                                      "poststart", "poststop"]},
                "path": {"type": "string", "pattern": "^/"},
                "args": _STRINGS, "env": _STRINGS,
                "timeout": {"type": "integer", "exclusiveMinimum": 0},
            },
        },
    },
}
