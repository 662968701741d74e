"""The OpenAPI 3.1 document of the HTTP API, built from the control protocol's command table.

One table (`prompts.SETTINGS_COMMANDS` / `RUN_COMMANDS`, and `COMMAND_ROUTES` below) drives both the
routes and this schema, so the schema cannot list a field the dispatcher would refuse. Served at
/openapi.json.
"""

from __future__ import annotations

from .. import __version__
from ..prompts import (COMMANDS, MAX_CONDITIONING_FRAMES, MAX_GUIDANCE_SCALE, MAX_PROMPT_CHARS,
                       MAX_TRANSITION_CHUNKS)

__all__ = ["COMMAND_ROUTES", "openapi_document", "FIELD_SCHEMAS"]

#: POST /api/<route> -> control command
COMMAND_ROUTES = {
    "prompt": "set_prompt",
    "negative-prompt": "set_negative_prompt",
    "guidance": "set_guidance",
    "conditioning": "set_conditioning",
    "seed": "set_seed",
    "pause": "pause",
    "resume": "resume",
    "stop": "stop",
}

FIELD_SCHEMAS = {
    "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS},
    "negative_prompt": {"type": ["string", "null"], "maxLength": MAX_PROMPT_CHARS},
    "transition": {"type": "integer", "minimum": 0, "maximum": MAX_TRANSITION_CHUNKS,
                   "description": "chunks to blend over (0 or 1: at once)"},
    "guidance_scale": {"type": "number", "minimum": 0, "maximum": MAX_GUIDANCE_SCALE},
    "min": {"type": "integer", "minimum": 1, "maximum": MAX_CONDITIONING_FRAMES},
    "max": {"type": "integer", "minimum": 1, "maximum": MAX_CONDITIONING_FRAMES},
    "seed": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
}

_ANSWER = {"$ref": "#/components/schemas/Answer"}
_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _command_schema(command: str) -> dict:
    spec = COMMANDS[command]
    return {"type": "object", "additionalProperties": False,
            "properties": {name: FIELD_SCHEMAS[name] for name in spec},
            "required": [name for name, required in spec.items() if required]}


def _errors(*codes: int) -> dict:
    text = {400: "a bad command (one line in `error`, the field in `field`)", 401: "missing or wrong bearer token",
            413: "request body too large", 429: "too many requests (see Retry-After)",
            503: "the stream is not answering (starting or ended)"}
    return {str(c): {"description": text[c], "content": _json(_ERROR)} for c in codes}


def _command_path(route: str, command: str) -> dict:
    op = {"operationId": command, "summary": f"control command {command}", "tags": ["control"],
          "security": [{"bearer": []}],
          "responses": {"200": {"description": "accepted; `applies_at_chunk` says from which chunk",
                                "content": _json(_ANSWER)}, **_errors(400, 401, 413, 429, 503)}}
    if COMMANDS[command]:
        op["requestBody"] = {"required": True, "content": _json(_command_schema(command))}
    return {"post": op}


def _get(op_id: str, summary: str, schema: dict, secured: bool = True, content_type: str = "application/json") -> dict:
    op = {"operationId": op_id, "summary": summary,
          "responses": {"200": {"description": summary, "content": {content_type: {"schema": schema}}}}}
    if secured:
        op["security"] = [{"bearer": []}]
        op["responses"].update(_errors(401, 429))
    return {"get": op}


def openapi_document() -> dict:
    """The whole document (a dict ready for JSON)."""
    paths = {f"/api/{route}": _command_path(route, command) for route, command in COMMAND_ROUTES.items()}
    paths["/api/command"] = {"post": {
        "operationId": "command", "summary": "any control command as the ZeroMQ socket takes it", "tags": ["control"],
        "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": _json({"oneOf": [
            {**_command_schema(c), "properties": {"command": {"const": c}, **_command_schema(c)["properties"]},
             "required": ["command", *_command_schema(c)["required"]]} for c in COMMANDS]})},
        "responses": {"200": {"description": "the control answer", "content": _json(_ANSWER)},
                      **_errors(400, 401, 413, 429, 503)}}}
    paths["/api/status"] = _get("status", "figures of the run, the current prompt and what is scheduled",
                                {"type": "object"})
    paths["/api/schedule"] = _get("schedule", "the prompt now and the scheduled prompt changes", {"type": "object"})
    paths["/healthz"] = _get("health", "200 while healthy, 503 when the producer is dead, stalled or ended",
                             {"$ref": "#/components/schemas/Health"}, secured=False)
    paths["/healthz"]["get"]["responses"]["503"] = {"description": "unhealthy", "content": _json(
        {"$ref": "#/components/schemas/Health"})}
    paths["/metrics"] = _get("metrics", "Prometheus text format", {"type": "string"},
                             content_type="text/plain")
    paths["/whep"] = {"post": {
        "operationId": "whep", "summary": "WHEP: an SDP offer in, the SDP answer out (watch the stream)",
        "tags": ["webrtc"], "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/sdp": {"schema": {"type": "string"}}}},
        "responses": {"201": {"description": "the SDP answer; Location names the session",
                              "content": {"application/sdp": {"schema": {"type": "string"}}}},
                      **_errors(400, 401, 413, 429, 503)}}}
    paths["/whep/{session}"] = {"delete": {
        "operationId": "whep_delete", "summary": "end a WHEP session", "tags": ["webrtc"],
        "security": [{"bearer": []}],
        "parameters": [{"name": "session", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "ended"}, **_errors(401, 429)}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "continuityseq-stream serve", "version": __version__,
                 "description": "Steer and watch one never-ending generated video stream."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "--token; needed only when one is set"}},
            "schemas": {
                "Answer": {"type": "object", "required": ["ok", "command"], "properties": {
                    "ok": {"const": True}, "command": {"type": "string"},
                    "applies_at_chunk": {"type": "integer"}}},
                "Error": {"type": "object", "required": ["ok", "error"], "properties": {
                    "ok": {"const": False}, "error": {"type": "string"}, "field": {"type": ["string", "null"]}}},
                "Health": {"type": "object", "required": ["healthy", "status", "reason"], "properties": {
                    "healthy": {"type": "boolean"}, "status": {"type": "string"}, "reason": {"type": "string"}}},
            },
        },
    }
