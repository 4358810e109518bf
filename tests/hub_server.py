"""A loopback stand-in for the Hugging Face Hub's file endpoints (and plain URLs), for download tests.

It answers ``HEAD``/``GET`` on ``/{repo}/resolve/{revision}/{path}`` and ``/spaces/{repo}/resolve/...``
with the headers ``huggingface_hub`` reads (``X-Repo-Commit``, ``ETag``, ``X-Linked-Size``), supports
``Range``, and can be told to misbehave: serve a file short (truncated transfer) or answer 404.

It also accepts uploads the way ``HfApi.create_repo`` + ``upload_folder`` make them: ``POST
/api/repos/create``, ``/api/validate-yaml``, ``/api/models/{repo}/preupload/{rev}`` (every file is
declared "regular", so its bytes travel inside the commit) and ``/api/models/{repo}/commit/{rev}``
(NDJSON); committed files become downloadable like the ones added with :meth:`FakeHub.add`.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
from dataclasses import dataclass, field

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    files: dict[str, bytes] = field(default_factory=dict)  # "[spaces/]owner/repo/path" -> content
    truncate: set[str] = field(default_factory=set)  # keys served short, with a consistent Content-Length
    cut: set[str] = field(default_factory=set)  # keys whose connection drops after half the announced bytes
    requests: list[tuple[str, str]] = field(default_factory=list)
    repos: dict[str, dict] = field(default_factory=dict)  # created repos: "owner/name" -> create payload
    commits: list[dict] = field(default_factory=list)  # {"repo", "summary", "files"} per received commit
    url: str = ""

    def add(self, repo: str, path: str, data: bytes, repo_type: str = "model") -> str:
        key = ("spaces/" if repo_type == "space" else "") + f"{repo}/{path}"
        self.files[key] = data
        return key

    def _lookup(self, url_path: str) -> tuple[str, bytes | None]:
        parts = url_path.lstrip("/").split("/")
        if parts[0] == "raw":  # plain URL downloads: /raw/<name>
            key = "/".join(parts)
            return key, self.files.get(key)
        prefix = []
        if parts[0] == "spaces":
            prefix, parts = ["spaces"], parts[1:]
        if len(parts) < 5 or parts[2] != "resolve":
            return "", None
        key = "/".join(prefix + parts[:2] + parts[4:])
        return key, self.files.get(key)


    def _post(self, url_path: str, body: bytes) -> tuple[int, dict]:
        """Answer one Hub API POST: (status, JSON reply)."""
        parts = url_path.strip("/").split("/")
        if parts[:3] == ["api", "repos", "create"]:
            payload = json.loads(body or b"{}")
            repo = "/".join(p for p in (payload.get("organization"), payload["name"]) if p)
            prefix = "" if payload.get("type", "model") == "model" else "spaces/"
            if repo in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{prefix}{repo}"}
            self.repos[repo] = payload
            return 200, {"url": f"{self.url}/{prefix}{repo}"}
        if parts[:2] == ["api", "validate-yaml"]:
            return 200, {"errors": [], "warnings": []}
        if len(parts) >= 6 and parts[0] == "api" and parts[1] == "models" and parts[4] in ("preupload", "commit"):
            repo = f"{parts[2]}/{parts[3]}"
            if repo not in self.repos:
                return 404, {"error": "Repository not found"}
            if parts[4] == "preupload":
                files = json.loads(body)["files"]
                return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            summary, added = "", []
            for line in body.decode().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                if item["key"] == "header":
                    summary = item["value"].get("summary", "")
                elif item["key"] == "file":
                    value = item["value"]
                    data = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else value["content"].encode()
                    self.add(repo, value["path"], data)
                    added.append(value["path"])
            self.commits.append({"repo": repo, "summary": summary, "files": added})
            return 200, {"commitUrl": f"{self.url}/{repo}/commit/{COMMIT}", "commitOid": COMMIT}
        return 404, {"error": f"no such endpoint: {url_path}"}


def start(hub: FakeHub) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def _answer(self, with_body: bool):
            hub.requests.append((self.command, self.path))
            key, data = hub._lookup(self.path.split("?")[0])
            if data is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Error-Message", "Entry not found")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[: len(data) // 2] if key in hub.truncate else data
            start_at = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start_at = int(rng[6:].split("-")[0])
            self.send_response(206 if start_at else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Content-Length", str(len(body) - start_at))
            self.end_headers()
            if with_body and key in hub.cut:
                self.wfile.write(body[start_at:][: len(body) // 2])
                self.close_connection = True
            elif with_body:
                self.wfile.write(body[start_at:])

        def do_HEAD(self):
            self._answer(False)

        def do_GET(self):
            self._answer(True)

        def do_POST(self):
            hub.requests.append((self.command, self.path))
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, reply = hub._post(self.path.split("?")[0], body)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    return server
