#!/usr/bin/env python3
"""A stand-in for Azure Data Factory, Key Vault and the Microsoft identity platform's token
endpoint, for ferry's tests. No emulator of Data Factory exists; this server keeps the state
the documented REST calls (ARM api-version 2018-06-01, Key Vault 7.4) would change, and
simulates pipeline runs. It is NOT Azure: ferry's azureDataFactory engine was tested against
it, not against the real service.

    python3 standin.py --port 0 --client-id ID --client-secret SECRET [--token-seconds 3]

prints `listening on PORT` once it listens. Everything under one address:

    POST /{tenant}/oauth2/v2.0/token                      client credentials -> bearer token
    PUT|DELETE /vault/secrets/{name}, DELETE /vault/deletedsecrets/{name}
    PUT|GET|DELETE /subscriptions/.../factories/{f}/{linkedservices|datasets|pipelines}/{name}
    POST .../pipelines/{name}/createRun, GET .../pipelineruns/{id},
    POST .../pipelineruns/{id}/cancel, POST .../pipelineruns/{id}/queryActivityruns,
    POST .../queryPipelineRuns
    GET /_standin/state                                  what exists now, for assertions

A run is Queued, then InProgress while dataRead grows, then Succeeded. The source dataset's
folderPath picks a scenario: containing `fail` -> Failed; `slow` -> a long run (60 s);
`queue` -> a long Queued phase. Tokens expire after --token-seconds; a request with an
expired or unknown token gets 401 ExpiredAuthenticationToken / InvalidAuthenticationToken.
Bodies are checked against the examples in ./examples (keys and JSON types); a body that
does not fit gets 400 naming the path at fault.
"""

import argparse
import json
import os
import re
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = {}
for name in os.listdir(os.path.join(HERE, "examples")):
    if name.endswith(".json"):
        with open(os.path.join(HERE, "examples", name)) as f:
            EXAMPLES[name[:-5]] = json.load(f)

TYPES = {
    "linked": {"AmazonS3", "AzureBlobStorage"},
    "location": {"AmazonS3Location", "AzureBlobStorageLocation"},
    "read": {"AmazonS3ReadSettings", "AzureBlobStorageReadSettings"},
    "write": {"AzureBlobStorageWriteSettings"},
}

LOCK = threading.Lock()
STATE = {
    "tokens": {},  # token -> (scope, expires)
    "tokens_issued": 0,
    "expired_refusals": 0,
    "secrets": {},
    "purged": [],
    "linkedservices": {},
    "datasets": {},
    "pipelines": {},
    "runs": {},
    "requests": [],
}
ARGS = None


def shape(example, body, path="$"):
    """Problems with `body` against `example`: unknown keys, other JSON types."""
    if isinstance(example, dict):
        if not isinstance(body, dict):
            return [f"{path}: expected an object"]
        out = []
        for key, value in body.items():
            if key not in example:
                out.append(f"{path}.{key}: not in the documented shape")
            else:
                out.extend(shape(example[key], value, f"{path}.{key}"))
        return out
    if isinstance(example, list):
        if not isinstance(body, list):
            return [f"{path}: expected an array"]
        out = []
        for i, item in enumerate(body):
            out.extend(shape(example[0], item, f"{path}[{i}]"))
        return out
    if isinstance(example, bool):
        return [] if isinstance(body, bool) else [f"{path}: expected true or false"]
    if isinstance(example, (int, float)):
        return [] if isinstance(body, (int, float)) and not isinstance(body, bool) else [f"{path}: expected a number"]
    if isinstance(example, str):
        return [] if isinstance(body, str) else [f"{path}: expected a string"]
    return []


def error(code, message):
    return {"error": {"code": code, "message": message}}


class Run:
    def __init__(self, pipeline, scenario):
        self.id = str(uuid.uuid4())
        self.pipeline = pipeline
        self.scenario = scenario
        self.created = time.time()
        self.cancel_at = None
        self.total = ARGS.bytes
        self.queue = 10.0 if scenario == "queue" else 0.3
        self.length = 60.0 if scenario == "slow" else 1.0

    def status(self):
        now = time.time()
        if self.cancel_at is not None:
            return ("Cancelled" if now - self.cancel_at > 0.5 else "Canceling"), self.progress(self.cancel_at)
        t = now - self.created
        if t < self.queue:
            return "Queued", 0
        if t < self.queue + self.length:
            return "InProgress", self.progress(now)
        if self.scenario == "fail":
            return "Failed", self.total // 2
        return "Succeeded", self.total

    def progress(self, at):
        t = at - self.created - self.queue
        if t <= 0:
            return 0
        return min(self.total, int(self.total * t / self.length))

    def view(self):
        status, _ = self.status()
        message = ""
        if status == "Failed":
            message = "Operation on target Copy failed: ErrorCode=UserErrorSourceBlobNotExists,'The required blob is missing.'"
        return {"runId": self.id, "pipelineName": self.pipeline, "status": status, "message": message,
                "runStart": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))}

    def activity(self):
        status, done = self.status()
        out = {"activityName": "Copy", "activityType": "Copy", "pipelineRunId": self.id, "status": status,
               "output": {"dataRead": done, "dataWritten": done, "filesRead": 3 if done else 0,
                          "filesWritten": 3 if status == "Succeeded" else 0,
                          "copyDuration": int(time.time() - self.created), "throughput": 1.0}}
        if status == "Failed":
            out["error"] = {"errorCode": "2200", "message": "ErrorCode=UserErrorSourceBlobNotExists,'The required blob is missing.'"}
        return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return raw

    def authorised(self, scope):
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        with LOCK:
            known = STATE["tokens"].get(token)
            if known is None:
                self.reply(401, error("InvalidAuthenticationToken", "The access token is invalid."))
                return False
            if known[1] < time.time():
                STATE["expired_refusals"] += 1
                self.reply(401, error("ExpiredAuthenticationToken", "The access token expiry UTC time is earlier than current UTC time."))
                return False
            if known[0] != scope:
                self.reply(401, error("InvalidAuthenticationTokenAudience", f"The access token has an audience for {known[0]}."))
                return False
        return True

    def handle_any(self, method):
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        raw = self.body()
        with LOCK:
            STATE["requests"].append({"method": method, "path": path})
        if path == "/_standin/state" and method == "GET":
            with LOCK:
                view = {k: v for k, v in STATE.items() if k not in ("tokens", "runs", "requests")}
                view["runs"] = {i: r.view() for i, r in STATE["runs"].items()}
                view["requests"] = list(STATE["requests"])
            return self.reply(200, view)
        m = re.fullmatch(r"/([^/]+)/oauth2/v2\.0/token", path)
        if m and method == "POST":
            form = urllib.parse.parse_qs(raw.decode())
            one = lambda k: (form.get(k) or [""])[0]
            if one("grant_type") != "client_credentials" or one("client_id") != ARGS.client_id:
                return self.reply(400, {"error": "unauthorized_client", "error_description": "AADSTS700016: Application not found in the directory."})
            if one("client_secret") != ARGS.client_secret:
                return self.reply(401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."})
            scope = one("scope")
            if scope not in ("https://management.azure.com/.default", "https://vault.azure.net/.default"):
                return self.reply(400, {"error": "invalid_scope", "error_description": f"AADSTS70011: The provided value for scope {scope} is not valid."})
            token = "tok-" + uuid.uuid4().hex
            with LOCK:
                STATE["tokens"][token] = (scope, time.time() + ARGS.token_seconds)
                STATE["tokens_issued"] += 1
            claimed = ARGS.claimed_token_seconds or int(ARGS.token_seconds)
            return self.reply(200, {"token_type": "Bearer", "expires_in": claimed, "access_token": token})

        m = re.fullmatch(r"/vault/(secrets|deletedsecrets)/([A-Za-z0-9-]+)", path)
        if m:
            if not self.authorised("https://vault.azure.net/.default"):
                return
            kind, name = m.groups()
            with LOCK:
                if kind == "secrets" and method == "PUT":
                    body = json.loads(raw or b"{}")
                    problems = shape(EXAMPLES["secret"], body)
                    if problems or not isinstance(body.get("value"), str):
                        return self.reply(400, error("BadParameter", "; ".join(problems) or "value is required"))
                    STATE["secrets"][name] = body["value"]
                    return self.reply(200, {"id": f"https://vault/secrets/{name}/1"})
                if kind == "secrets" and method == "DELETE":
                    if name not in STATE["secrets"]:
                        return self.reply(404, error("SecretNotFound", f"A secret with (name/id) {name} was not found in this key vault."))
                    del STATE["secrets"][name]
                    return self.reply(200, {"recoveryId": f"https://vault/deletedsecrets/{name}"})
                if kind == "deletedsecrets" and method == "DELETE":
                    STATE["purged"].append(name)
                    return self.reply(204)
            return self.reply(405, error("MethodNotAllowed", method))

        m = re.fullmatch(r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.DataFactory/factories/([^/]+)(/.*)?", path)
        if not m:
            return self.reply(404, error("NotFound", path))
        if url.query.find("api-version=2018-06-01") < 0:
            return self.reply(400, error("MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required."))
        if not self.authorised("https://management.azure.com/.default"):
            return
        rest = m.group(2) or ""
        body = json.loads(raw) if raw else {}
        with LOCK:
            return self.factory(method, rest, body)

    def factory(self, method, rest, body):
        m = re.fullmatch(r"/(linkedservices|datasets|pipelines)/([A-Za-z0-9_-]+)", rest)
        if m:
            kind, name = m.groups()
            store = STATE[kind]
            if method == "GET":
                return self.reply(200, store[name]) if name in store else self.reply(404, error("NotFound", name))
            if method == "DELETE":
                # ADF refuses to delete what something else refers to.
                users = [n for k in ("datasets", "pipelines") for n, v in STATE[k].items() if f'"{name}"' in json.dumps(v) and n != name]
                if users and kind != "pipelines":
                    return self.reply(400, error("ReferencedResource", f"{name} is referenced by {users}"))
                if name not in store:
                    return self.reply(204)
                del store[name]
                return self.reply(200)
            if method == "PUT":
                problems = self.check(kind, body)
                if problems:
                    return self.reply(400, error("BadRequest", "; ".join(problems)))
                store[name] = body
                return self.reply(200, {"name": name, **body})
        m = re.fullmatch(r"/pipelines/([A-Za-z0-9_-]+)/createRun", rest)
        if m and method == "POST":
            name = m.group(1)
            if name not in STATE["pipelines"]:
                return self.reply(404, error("PipelineNotFound", name))
            source = STATE["pipelines"][name]["properties"]["activities"][0]["inputs"][0]["referenceName"]
            folder = STATE["datasets"][source]["properties"]["typeProperties"]["location"].get("folderPath", "")
            scenario = next((s for s in ("fail", "slow", "queue") if s in folder), "ok")
            run = Run(name, scenario)
            STATE["runs"][run.id] = run
            return self.reply(200, {"runId": run.id})
        m = re.fullmatch(r"/pipelineruns/([0-9a-f-]+)(/cancel|/queryActivityruns)?", rest)
        if m:
            run = STATE["runs"].get(m.group(1))
            if run is None:
                return self.reply(404, error("PipelineRunNotFound", m.group(1)))
            if m.group(2) is None and method == "GET":
                return self.reply(200, run.view())
            if m.group(2) == "/cancel" and method == "POST":
                if run.status()[0] in ("Queued", "InProgress") and run.cancel_at is None:
                    run.cancel_at = time.time()
                return self.reply(200)
            if m.group(2) == "/queryActivityruns" and method == "POST":
                if run.status()[0] == "Queued":
                    return self.reply(200, {"value": []})
                return self.reply(200, {"value": [run.activity()]})
        if rest == "/queryPipelineRuns" and method == "POST":
            names = set()
            for f in body.get("filters", []):
                if f.get("operand") == "PipelineName" and f.get("operator") == "Equals":
                    names.update(f.get("values", []))
            runs = [r.view() for r in STATE["runs"].values() if not names or r.pipeline in names]
            return self.reply(200, {"value": runs})
        return self.reply(404, error("NotFound", rest))

    def check(self, kind, body):
        props = body.get("properties", {})
        if kind == "linkedservices":
            t = props.get("type")
            if t not in TYPES["linked"]:
                return [f"$.properties.type: '{t}' is not a linked service type ferry uses"]
            problems = shape(EXAMPLES[f"linkedservice-{t}"], body)
            for key, value in props.get("typeProperties", {}).items():
                if isinstance(value, dict) and value.get("type") == "AzureKeyVaultSecret":
                    if value.get("secretName") not in STATE["secrets"]:
                        problems.append(f"$.properties.typeProperties.{key}: secret {value.get('secretName')} is not in the vault")
                elif key in ("secretAccessKey", "connectionString", "sasUri"):
                    problems.append(f"$.properties.typeProperties.{key}: a credential must be a Key Vault reference")
            return problems
        if kind == "datasets":
            problems = shape(EXAMPLES["dataset-Binary"], body)
            loc = props.get("typeProperties", {}).get("location", {})
            if loc.get("type") not in TYPES["location"]:
                problems.append(f"$.properties.typeProperties.location.type: '{loc.get('type')}'")
            ls = props.get("linkedServiceName", {}).get("referenceName")
            if ls not in STATE["linkedservices"]:
                problems.append(f"$.properties.linkedServiceName: {ls} does not exist")
            return problems
        problems = shape(EXAMPLES["pipeline-Copy"], body)
        for act in props.get("activities", []):
            for ref in act.get("inputs", []) + act.get("outputs", []):
                if ref.get("referenceName") not in STATE["datasets"]:
                    problems.append(f"dataset {ref.get('referenceName')} does not exist")
            tp = act.get("typeProperties", {})
            if tp.get("source", {}).get("storeSettings", {}).get("type") not in TYPES["read"]:
                problems.append("$.properties.activities[0].typeProperties.source.storeSettings.type")
            if tp.get("sink", {}).get("storeSettings", {}).get("type") not in TYPES["write"]:
                problems.append("$.properties.activities[0].typeProperties.sink.storeSettings.type")
        return problems

    def do_GET(self):
        self.handle_any("GET")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_POST(self):
        self.handle_any("POST")

    def do_DELETE(self):
        self.handle_any("DELETE")


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--client-id", required=True)
    p.add_argument("--client-secret", required=True)
    p.add_argument("--token-seconds", type=float, default=3600)
    # What the token answer says of its lifetime; longer than --token-seconds, it makes a
    # token expire while the client still holds it.
    p.add_argument("--claimed-token-seconds", type=int, default=None)
    p.add_argument("--bytes", type=int, default=3 * 1024 * 1024)
    ARGS = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
