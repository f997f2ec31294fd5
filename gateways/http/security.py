"""The HTTP admin API of the access model: users, API tokens, access keys and ACLs.

Each handler is one ``Broker`` call (core/security.py) with the request's
principal: changing anything needs CLUSTER ALTER, listing CLUSTER DESCRIBE (a
super user has both). Secrets are shown once, in the answer that made them
(a token, a SecretKey); listings never show them. ``ferrymq user`` and
``ferrymq acl`` (gateways/usercli.py) talk to these routes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...core.access import Rule
from ...core.broker import Broker
from .api import JSON, json_body, ok_resp, problem_resp
from .app import json_response
from .problems import Problem
from .routing import Param, Resp, Route
from .server import Request, Response

MAX_RULES = 1000  # ACL rules added or deleted per request

NAME = {"type": "string", "minLength": 1, "maxLength": 255}
P_USER = Param("user", "path", NAME)
USER_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["name", "super", "mechanisms"],
    "properties": {"name": {"type": "string"}, "super": {"type": "boolean"},
                   "mechanisms": {"type": "array", "items": {"type": "string"}},
                   "tokens": {"type": "integer"}, "access_keys": {"type": "integer"},
                   "source": {"enum": ["state", "file"]}}}
USERS_SCHEMA = {"type": "object", "required": ["users"],
                "properties": {"users": {"type": "array", "items": USER_SCHEMA}}}
USER_BODY = {"type": "object", "additionalProperties": False,
             "properties": {"password": {"type": "string", "minLength": 1, "maxLength": 1024},
                            "super": {"type": "boolean"}}}
TOKEN_BODY = {"type": "object", "additionalProperties": False,
              "properties": {"label": {"type": "string", "maxLength": 255}}}
RULE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["principal", "resource_type", "operation"],
    "properties": {
        "principal": {"type": "string", "description": "User:<name>, User:* or User:ANONYMOUS"},
        "resource_type": {"enum": ["topic", "group", "transactional_id", "cluster"]},
        "pattern_type": {"enum": ["literal", "prefixed", "mqtt"]},
        "resource": {"type": "string", "description": "a name, a prefix, * or an MQTT filter"},
        "operation": {"enum": ["read", "write", "create", "delete", "describe", "alter", "all"]},
        "permission": {"enum": ["allow", "deny"]},
        "host": {"type": "string", "description": "*, an address or a CIDR range"},
        "substitute": {"type": "boolean"}, "id": {"type": "string"}}}
RULES_SCHEMA = {"type": "object", "required": ["rules"],
                "properties": {"rules": {"type": "array", "items": RULE_SCHEMA}}}
RULES_BODY = {"type": "object", "required": ["rules"],
              "properties": {"rules": {"type": "array", "items": RULE_SCHEMA, "minItems": 1,
                                       "maxItems": MAX_RULES}}}
ANY_OBJECT = {"type": "object"}


def _object(req: Request) -> Mapping[str, Any]:
    doc = json_body(req)
    if not isinstance(doc, dict):
        raise Problem("invalid_body", "send a JSON object")
    return doc


def _rules(req: Request) -> list[Rule]:
    rules = _object(req).get("rules")
    if not isinstance(rules, list) or not 1 <= len(rules) <= MAX_RULES or not all(
            isinstance(r, dict) for r in rules):
        raise Problem("invalid_body", f'send {{"rules": [1-{MAX_RULES} rule objects]}}')
    return [Rule.from_json(r) for r in rules]


class SecurityApi:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def users(self, req: Request) -> Response:
        return json_response({"users": self.broker.users(principal=req.principal)})

    async def put_user(self, req: Request) -> Response:
        doc = _object(req) if req.body else {}
        if doc.keys() - {"password", "super"}:
            raise Problem("invalid_body", 'send {"password": ..., "super": true|false}')
        password, sup = doc.get("password"), doc.get("super")
        if ("password" in doc and not (isinstance(password, str) and 0 < len(password) <= 1024)) \
                or ("super" in doc and not isinstance(sup, bool)):
            raise Problem("invalid_body", "password is a string of 1-1024 characters, super true "
                          "or false")
        await self.broker.put_user(req.params["user"], password=password, super_user=sup,
                                   principal=req.principal)
        return json_response({"user": req.params["user"]})

    async def delete_user(self, req: Request) -> Response:
        if not await self.broker.delete_user(req.params["user"], principal=req.principal):
            raise Problem("not_found", f"no user {req.params['user']}")
        return Response(204, b"", JSON)

    async def create_token(self, req: Request) -> Response:
        doc = _object(req) if req.body else {}
        label = doc.get("label", "")
        if not isinstance(label, str) or len(label) > 255 or doc.keys() - {"label"}:
            raise Problem("invalid_body", 'send {"label": "..."} (at most 255 characters)')
        token = await self.broker.create_token(req.params["user"], label,
                                               principal=req.principal)
        return json_response({"user": req.params["user"], "token": token}, 201)

    async def tokens(self, req: Request) -> Response:
        return json_response({"tokens": self.broker.tokens(principal=req.principal)})

    async def delete_token(self, req: Request) -> Response:
        if not await self.broker.delete_token(req.params["id"], principal=req.principal):
            raise Problem("not_found", "no such token")
        return Response(204, b"", JSON)

    async def create_key(self, req: Request) -> Response:
        if req.body and _object(req):
            raise Problem("invalid_body", "send no body, or {}")
        ak, sk = await self.broker.create_access_key(req.params["user"], principal=req.principal)
        return json_response({"user": req.params["user"], "access_key": ak, "secret_key": sk},
                             201)

    async def keys(self, req: Request) -> Response:
        return json_response({"access_keys": self.broker.access_keys(principal=req.principal)})

    async def delete_key(self, req: Request) -> Response:
        if not await self.broker.delete_access_key(req.params["key"], principal=req.principal):
            raise Problem("not_found", "no such access key")
        return Response(204, b"", JSON)

    async def acls(self, req: Request) -> Response:
        return json_response({"rules": [r.to_json() for r in
                                        self.broker.acls(principal=req.principal)]})

    async def add_acls(self, req: Request) -> Response:
        rules = _rules(req)
        await self.broker.add_acls(rules, principal=req.principal)
        return json_response({"rules": [r.to_json() for r in rules]}, 201)

    async def delete_acls(self, req: Request) -> Response:
        gone = await self.broker.delete_acls(_rules(req), principal=req.principal)
        return json_response({"rules": [r.to_json() for r in gone]})

    def routes(self) -> list[Route]:
        tag = "security"
        body = {JSON: ANY_OBJECT}
        return [
            Route("GET", "/v1/users", self.users, "list_users",
                  "Every user (no secrets)", tag, (), None, True, {200: ok_resp(USERS_SCHEMA)}),
            Route("PUT", "/v1/users/{user}", self.put_user, "put_user",
                  "Create a user (a password is needed) or change its password or super flag",
                  tag, (P_USER,), {JSON: USER_BODY}, False,
                  {200: ok_resp(ANY_OBJECT), 400: problem_resp("Invalid user or body")}),
            Route("DELETE", "/v1/users/{user}", self.delete_user, "delete_user",
                  "Delete a user with its tokens and access keys", tag, (P_USER,), None, True,
                  {204: Resp("Deleted"), 404: problem_resp("No such user")}),
            Route("POST", "/v1/users/{user}/tokens", self.create_token, "create_token",
                  "A new API token of the user (shown once)", tag, (P_USER,),
                  {JSON: TOKEN_BODY}, False, {201: ok_resp(ANY_OBJECT)}),
            Route("GET", "/v1/tokens", self.tokens, "list_tokens",
                  "Every API token (its id, never the token)", tag, (), None, True,
                  {200: ok_resp(ANY_OBJECT)}),
            Route("DELETE", "/v1/tokens/{id}", self.delete_token, "delete_token",
                  "Delete an API token (by its listed id or the token)", tag,
                  (Param("id", "path", NAME),), None, True,
                  {204: Resp("Deleted"), 404: problem_resp("No such token")}),
            Route("POST", "/v1/users/{user}/access-keys", self.create_key, "create_access_key",
                  "A new RocketMQ AccessKey/SecretKey pair of the user (the secret shown once)",
                  tag, (P_USER,), body, False, {201: ok_resp(ANY_OBJECT)}),
            Route("GET", "/v1/access-keys", self.keys, "list_access_keys",
                  "Every access key (never a secret)", tag, (), None, True,
                  {200: ok_resp(ANY_OBJECT)}),
            Route("DELETE", "/v1/access-keys/{key}", self.delete_key, "delete_access_key",
                  "Delete an access key", tag, (Param("key", "path", NAME),), None, True,
                  {204: Resp("Deleted"), 404: problem_resp("No such access key")}),
            Route("GET", "/v1/acls", self.acls, "list_acls",
                  "Every ACL rule (the state log's and the loaded files')", tag, (), None, True,
                  {200: ok_resp(RULES_SCHEMA)}),
            Route("POST", "/v1/acls", self.add_acls, "add_acls", "Add ACL rules (all or none)",
                  tag, (), {JSON: RULES_BODY}, True,
                  {201: ok_resp(RULES_SCHEMA), 400: problem_resp("Invalid rule")}),
            Route("POST", "/v1/acls/delete", self.delete_acls, "delete_acls",
                  "Delete ACL rules; answers those that existed", tag, (), {JSON: RULES_BODY},
                  True, {200: ok_resp(RULES_SCHEMA), 400: problem_resp("Invalid rule")}),
        ]
