"""A loopback stand-in for the Hugging Face Hub's HTTP API, for tests without a network.

It answers the routes huggingface_hub (2.x; read from its source: ``hf_api.py``, ``_commit_api.py``,
``file_download.py``) calls to sign in, create a repository, commit files and download them:

- ``GET  /api/whoami-v2``                                   who a token belongs to
- ``POST /api/repos/create``                                a new model repository (409 when it exists)
- ``POST /api/validate-yaml``                               the README's front matter (create_commit checks it)
- ``GET  /api/models/{repo}[/revision/{rev}]``             repo info: commit and files (``?blobs=true``: sizes)
- ``POST /api/models/{repo}/preupload/{rev}``               how each file is uploaded: always "regular" here, so
                                                            files travel inside the commit (no LFS/Xet transfer)
- ``POST /api/models/{repo}/commit/{rev}``                  an NDJSON commit: header + base64 files
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``                 a file, with the headers hf_hub_download needs

Rules as on the Hub: a token writes only under its user's name and its organisations' names; a private repo is
seen only by them (others get 404 RepoNotFound, as the Hub answers). Every request is recorded with the token it
carried (``seen``), so a test can tell whose token a push used; ``fail`` makes a route answer an error once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("POST", re.compile(r"^/api/repos/create$"), "create"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("GET", re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "info"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]


def git_blob_id(content: bytes) -> str:
    """The git object id of a file's content (what the Hub reports as a file's oid and ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)  # oldest first: (oid, files)

    def at(self, revision: str | None) -> tuple[str, dict[str, bytes]] | None:
        if revision in (None, "main"):
            return self.commits[-1]
        return next((c for c in self.commits if c[0] == revision), None)


@dataclass
class Seen:
    method: str
    path: str
    token: str | None


class HubStandIn:
    """The stand-in server on a free loopback port; ``url`` is what ``HF_ENDPOINT`` gets."""

    def __init__(self) -> None:
        self.users: dict[str, tuple[str, tuple[str, ...]]] = {}  # token -> (user name, organisations)
        self.repos: dict[str, Repo] = {}
        self.seen: list[Seen] = []
        self.fail: dict[str, int] = {}  # route name -> HTTP status to answer once (e.g. {"commit": 500})
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_user(self, name: str, token: str, orgs: tuple[str, ...] = ()) -> None:
        self.users[token] = (name, orgs)

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, private: bool = False) -> None:
        """A repository someone else made, with one commit of ``files``."""
        repo = Repo(repo_id, private)
        self._add_commit(repo, files)
        self.repos[repo_id] = repo

    def tokens_used(self, route_part: str) -> set[str | None]:
        """The tokens of the requests whose path contains ``route_part``."""
        return {s.token for s in self.seen if route_part in s.path}

    # ------------------------------------------------------------------------------------------

    def _add_commit(self, repo: Repo, files: dict[str, bytes]) -> str:
        previous = repo.commits[-1][0] if repo.commits else ""
        oid = hashlib.sha1((previous + json.dumps(sorted((k, git_blob_id(v)) for k, v in files.items()))).encode())
        repo.commits.append((oid.hexdigest(), files))
        return oid.hexdigest()

    def _may_write(self, token: str | None, namespace: str) -> bool:
        user = self.users.get(token or "")
        return user is not None and (namespace == user[0] or namespace in user[1])

    def _visible(self, repo_id: str, token: str | None) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self._may_write(token, repo_id.split("/")[0])):
            return None
        return repo

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet: the test output is for the tests
                pass

            def do_GET(self) -> None:
                self._route("GET")

            def do_HEAD(self) -> None:
                self._route("HEAD")

            def do_POST(self) -> None:
                self._route("POST")

            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                path = unquote(url.path)
                auth = self.headers.get("Authorization", "")
                token = auth.removeprefix("Bearer ").strip() or None
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with hub._lock:
                    hub.seen.append(Seen(method, path, token))
                    for verb, pattern, name in _ROUTES:
                        match = pattern.match(path)
                        if verb == method and match:
                            if name in hub.fail:
                                status = hub.fail.pop(name)
                                return self._json(status, {"error": f"stand-in failure of {name}"})
                            args = {k: v for k, v in match.groupdict().items() if v is not None}
                            query = {k: v[0] for k, v in parse_qs(url.query).items()}
                            return getattr(self, f"_{name}")(token, body, query, **args)
                    self._json(404, {"error": f"no route {method} {path}"})

            # -- answers ---------------------------------------------------------------------------

            def _json(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _not_found(self) -> None:
                self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})

            def _whoami(self, token, body, query) -> None:
                if token not in hub.users:
                    message = "Invalid credentials in Authorization header"
                    return self._json(401, {"error": message}, {"X-Error-Message": message})
                name, orgs = hub.users[token]
                self._json(
                    200,
                    {
                        "type": "user",
                        "name": name,
                        "fullname": name.title(),
                        "avatarUrl": f"{hub.url}/avatars/{name}.png",
                        "orgs": [{"name": org, "type": "org", "roleInOrg": "write"} for org in orgs],
                        "auth": {"type": "access_token", "accessToken": {"displayName": "stand-in", "role": "write"}},
                    },
                )

            def _create(self, token, body, query) -> None:
                data = json.loads(body or b"{}")
                user = hub.users.get(token or "")
                if user is None:
                    return self._json(401, {"error": "Invalid credentials in Authorization header"})
                namespace = data.get("organization") or user[0]
                repo_id = f"{namespace}/{data['name']}"
                if not hub._may_write(token, namespace):
                    message = f'You don\'t have the rights to create a model under the namespace "{namespace}"'
                    return self._json(403, {"error": message})
                if repo_id in hub.repos:
                    return self._json(409, {"error": "You already created this model repo", "url": hub.url})
                private = data.get("visibility") == "private" or bool(data.get("private"))
                hub.add_repo(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
                hub.repos[repo_id].private = private
                self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

            def _validate_yaml(self, token, body, query) -> None:
                content = json.loads(body)["content"]
                match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
                try:
                    meta = yaml.safe_load(match.group(1)) if match else None
                except yaml.YAMLError as e:
                    return self._json(400, {"errors": [{"message": f"invalid YAML: {e}"}]})
                if match and not isinstance(meta, dict):
                    return self._json(400, {"errors": [{"message": "metadata must be a mapping"}]})
                self._json(200, {"errors": [], "warnings": []})

            def _info(self, token, body, query, repo, rev="main") -> None:
                found = hub._visible(repo, token)
                commit = found.at(rev) if found else None
                if commit is None:
                    return self._not_found()
                oid, files = commit
                siblings = [{"rfilename": p, "size": len(c), "blobId": git_blob_id(c)} for p, c in files.items()]
                self._json(200, {"id": repo, "sha": oid, "private": found.private, "siblings": siblings})

            def _preupload(self, token, body, query, repo, rev) -> None:
                found = hub._visible(repo, token)
                if found is None:
                    return self._not_found()
                _, files = found.commits[-1]
                answer = [
                    {
                        "path": f["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": git_blob_id(files[f["path"]]) if f["path"] in files else None,
                    }
                    for f in json.loads(body)["files"]
                ]
                self._json(200, {"files": answer})

            def _commit(self, token, body, query, repo, rev) -> None:
                found = hub._visible(repo, token)
                if found is None:
                    return self._not_found()
                if not hub._may_write(token, repo.split("/")[0]):
                    return self._json(403, {"error": f"You don't have the rights to write to {repo}"})
                files = dict(found.commits[-1][1])
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    elif item["key"] == "deletedFile":
                        files.pop(item["value"]["path"], None)
                    elif item["key"] != "header":
                        return self._json(400, {"error": f"the stand-in does not take {item['key']}"})
                oid = hub._add_commit(found, files)
                self._json(200, {"commitUrl": f"{hub.url}/{repo}/commit/{oid}", "commitOid": oid})

            def _resolve(self, token, body, query, repo, rev, path) -> None:
                found = hub._visible(repo, token)
                commit = found.at(rev) if found else None
                if commit is None:
                    return self._not_found()
                oid, files = commit
                if path not in files:
                    headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": oid}
                    return self._json(404, {"error": "Entry not found"}, headers)
                content = files[path]
                self.send_response(200)
                self.send_header("X-Repo-Commit", oid)
                self.send_header("ETag", f'"{git_blob_id(content)}"')
                self.send_header("Content-Length", str(len(content)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(content)

        return Handler
