"""A small in-memory Hugging Face Hub double on 127.0.0.1, enough for huggingface_hub's upload and download paths.

Implemented (shapes from huggingface_hub 2.4's client code):

- ``POST /api/repos/create`` (409 when it exists), ``POST /api/validate-yaml``;
- ``POST /api/models/{repo}/preupload/{rev}`` -> ``uploadMode: "regular"`` for every file (no LFS / Xet);
- ``POST /api/models/{repo}/commit/{rev}``: NDJSON ``header`` / ``file`` (base64) / ``deletedFile`` lines;
- ``GET /api/models/{repo}[/revision/{rev}]``: model info with ``sha`` and ``siblings``;
- ``GET /api/models/{repo}/tree/{rev}[/{path}]``: the file listing (``recursive`` honoured);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: the file, with ``ETag``, ``X-Repo-Commit``, ``Content-Length``.

Writes need a bearer token (401 otherwise), private repositories are hidden (404) from requests without one, and
every request is recorded in ``HubServer.requests`` for the tests. Bodies over ``MAX_BODY_BYTES`` are refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

MAX_BODY_BYTES = 64 * 1024 * 1024
REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a file, which the Hub uses as a regular file's ``oid`` and ``ETag``."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)

    @property
    def sha(self) -> str:
        # An empty repository still has an initial commit on the Hub.
        return self.commits[-1] if self.commits else hashlib.sha1(self.repo_id.encode()).hexdigest()


@dataclass
class RecordedRequest:
    method: str
    path: str
    authorization: str | None


class HubServer:
    """Start with ``HubServer().start()``; ``endpoint`` is its base URL; ``stop()`` shuts it down."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[RecordedRequest] = []
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        hub = self

        class Handler(_HubHandler):
            server_state = hub

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=10)
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _HubHandler(BaseHTTPRequestHandler):
    server_state: HubServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a connection may stay idle: a stuck client cannot hold a thread forever

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - silence the per-request stderr log
        pass

    # -- helpers ------------------------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, message: str, code: str | None = None, head: bool = False) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ValueError(f"request body of {length} bytes exceeds {MAX_BODY_BYTES}")
        body = self.rfile.read(length)
        if self.headers.get("Content-Encoding") == "gzip":
            import gzip

            body = gzip.decompress(body)
        return body

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") and len(auth) > len("Bearer ") else None

    def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.server_state.repos.get(repo_id)
        if repo is None or (repo.private and self._token() is None):
            self._error(404, f"Repository {repo_id} not found", "RepoNotFound", head=head)
            return None
        return repo

    def _record(self) -> None:
        with self.server_state.lock:
            self.server_state.requests.append(
                RecordedRequest(self.command, self.path, self.headers.get("Authorization"))
            )

    # -- routes -------------------------------------------------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        self._record()
        path = unquote(urlsplit(self.path).path)
        try:
            body = self._body()
        except ValueError as error:
            self._error(413, str(error))
            return
        if path == "/api/validate-yaml":
            self._json(200, {"errors": [], "warnings": []})
            return
        if self._token() is None:
            self._error(401, "Invalid credentials in Authorization header")
            return
        if path == "/api/repos/create":
            self._create_repo(json.loads(body or b"{}"))
            return
        match = re.fullmatch(rf"/api/models/{REPO}/(?P<op>preupload|commit)/(?P<rev>[^/]+)", path)
        if not match:
            self._error(404, f"Unknown route POST {path}")
            return
        repo = self._repo(match["repo"])
        if repo is None:
            return
        if match["rev"] != "main":
            self._error(404, f"Revision {match['rev']} not found", "RevisionNotFound")
            return
        if match["op"] == "preupload":
            files = json.loads(body)["files"]
            self._json(
                200,
                {
                    "files": [
                        {
                            "path": item["path"],
                            "uploadMode": "regular",
                            "shouldIgnore": False,
                            "oid": git_blob_sha1(repo.files[item["path"]]) if item["path"] in repo.files else None,
                        }
                        for item in files
                    ]
                },
            )
        else:
            self._commit(repo, body)

    def _create_repo(self, payload: dict) -> None:
        if payload.get("type", "model") not in (None, "model"):
            self._error(400, "Only model repositories are supported by this test server")
            return
        owner = payload.get("organization") or "user"
        repo_id = f"{owner}/{payload['name']}"
        with self.server_state.lock:
            if repo_id in self.server_state.repos:
                # Like the Hub, a conflict still names the repository (create_repo(exist_ok=True) reads it).
                message = "You already created this model repo"
                url = f"{self._base_url()}/{repo_id}"
                self._json(409, {"error": message, "url": url}, {"X-Error-Message": message})
                return
            # huggingface_hub 2.x sends ``visibility``; older clients sent ``private``.
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            self.server_state.repos[repo_id] = Repo(repo_id, private=private)
        self._json(200, {"url": f"{self._base_url()}/{repo_id}", "name": repo_id})

    def _commit(self, repo: Repo, body: bytes) -> None:
        additions: dict[str, bytes] = {}
        deletions: list[str] = []
        message = ""
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                message = value.get("summary", "")
            elif item["key"] == "file":
                if value.get("encoding", "base64") != "base64":
                    self._error(400, f"Unsupported encoding {value.get('encoding')!r}")
                    return
                additions[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                deletions.append(value["path"])
            else:
                self._error(400, f"Unsupported commit operation {item['key']!r} (only regular files)")
                return
        with self.server_state.lock:
            for name in deletions:
                repo.files.pop(name, None)
            repo.files.update(additions)
            sha = hashlib.sha1(f"{repo.sha}{message}{sorted(repo.files)}{len(repo.commits)}".encode()).hexdigest()
            repo.commits.append(sha)
        self._json(200, {"commitUrl": f"{self._base_url()}/{repo.repo_id}/commit/{sha}", "commitOid": sha})

    def _base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def do_HEAD(self) -> None:  # noqa: N802
        self._get(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._get(head=False)

    def _get(self, head: bool) -> None:
        self._record()
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        info = re.fullmatch(rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", path)
        tree = re.fullmatch(rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.+))?", path)
        resolve = re.fullmatch(rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path)
        match = info or tree or resolve
        if match is None:
            self._error(404, f"Unknown route GET {path}", head=head)
            return
        repo = self._repo(match["repo"], head=head)
        if repo is None:
            return
        revision = match["rev"] or "main"
        if revision not in ("main", repo.sha):
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
            return
        if info:
            self._json(
                200,
                {
                    "id": repo.repo_id,
                    "modelId": repo.repo_id,
                    "sha": repo.sha,
                    "private": repo.private,
                    "siblings": [{"rfilename": name} for name in sorted(repo.files)],
                },
            )
        elif tree:
            self._json(200, self._tree(repo, tree["sub"], query.get("recursive", ["false"])[0].lower() == "true"))
        else:
            name = resolve["file"]
            if name not in repo.files:
                self._error(404, f"Entry {name} not found", "EntryNotFound", head=head)
                return
            content = repo.files[name]
            etag = f'"{git_blob_sha1(content)}"'
            self._send(
                200,
                content,
                {"ETag": etag, "X-Repo-Commit": repo.sha, "Content-Type": "application/octet-stream"},
                head=head,
            )

    @staticmethod
    def _tree(repo: Repo, sub: str | None, recursive: bool) -> list[dict]:
        prefix = f"{sub.strip('/')}/" if sub else ""
        entries: dict[str, dict] = {}
        for name, content in sorted(repo.files.items()):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if "/" in rest and not recursive:
                folder = prefix + rest.split("/")[0]
                entries[folder] = {"type": "directory", "path": folder, "oid": git_blob_sha1(folder.encode())}
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                for depth in range(1, len(parts) + 1):
                    folder = prefix + "/".join(parts[:depth])
                    entries[folder] = {"type": "directory", "path": folder, "oid": git_blob_sha1(folder.encode())}
            entries[name] = {"type": "file", "path": name, "size": len(content), "oid": git_blob_sha1(content)}
        return list(entries.values())
