"""The Hub-compatible server: routes, repo store, byte counters and fault injection.

Routes (all that huggingface_hub 2.x calls for snapshot/hf_hub_download, create_repo and upload_folder):

    GET  /api/models/{org}/{name}[/revision/{rev}]     model info (`?blobs=True`: siblings with size, blobId, lfs)
    GET  /api/models/{org}/{name}/tree/{rev}[/{path}]  repo tree (one page)
    HEAD|GET /{org}/{name}/resolve/{rev}/{path}        file; ETag, X-Repo-Commit, Content-Length, Range (206)
    POST /api/repos/create                             create a repo (409 if it exists)
    POST /api/models/{org}/{name}/preupload/{rev}      upload modes: always "regular" (no LFS, no Xet)
    POST /api/models/{org}/{name}/commit/{rev}         NDJSON commit (header, file, deletedFile)
    POST /api/validate-yaml                            model card metadata check (always fine)
    GET  /api/whoami-v2                                the token's user

Faults (see `Faults`): drop the connection after N bytes of a file, pause a file after N bytes until
released, answer a route with 5xx N times; a token that is not in `tokens` always gets 401.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

# Files the Hub stores in LFS: big ones and weight formats (its default .gitattributes).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".model")
LFS_MIN_SIZE = 10 * 1024 * 1024
SEND_CHUNK = 64 * 1024


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Blob:
    """One file's content (in memory or on disk) with the ids the Hub reports for it."""

    size: int
    sha256: str
    git_oid: str
    lfs: bool
    data: bytes | None = None
    path: Path | None = None

    @classmethod
    def from_bytes(cls, data: bytes, lfs: bool) -> Blob:
        sha = hashlib.sha256(data).hexdigest()
        oid = git_blob_oid(_lfs_pointer(sha, len(data))) if lfs else git_blob_oid(data)
        return cls(size=len(data), sha256=sha, git_oid=oid, lfs=lfs, data=data)

    @classmethod
    def from_file(cls, path: Path, lfs: bool) -> Blob:
        sha, git = hashlib.sha256(), hashlib.sha1()
        size = path.stat().st_size
        git.update(b"blob %d\0" % size)
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
                git.update(chunk)
        digest = sha.hexdigest()
        oid = git_blob_oid(_lfs_pointer(digest, size)) if lfs else git.hexdigest()
        return cls(size=size, sha256=digest, git_oid=oid, lfs=lfs, path=path)

    @property
    def etag(self) -> str:
        # The Hub's ETag: the sha256 for LFS files, the git blob id otherwise (it names the cache blob).
        return self.sha256 if self.lfs else self.git_oid

    def read(self, start: int, end: int):
        """Yield the bytes [start, end) in chunks."""
        if self.data is not None:
            for pos in range(start, end, SEND_CHUNK):
                yield self.data[pos : min(end, pos + SEND_CHUNK)]
            return
        assert self.path is not None
        with self.path.open("rb") as f:
            f.seek(start)
            pos = start
            while pos < end:
                chunk = f.read(min(SEND_CHUNK, end - pos))
                if not chunk:
                    return
                pos += len(chunk)
                yield chunk


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, Blob]
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        oid = self.branches.get(rev, rev)
        return next((c for c in self.commits if c.oid == oid), None)


@dataclass
class Faults:
    """What the server does wrong, on purpose. Keys of the file faults are repo paths ('dir/file.bin')."""

    drop_after: dict[str, int] = field(default_factory=dict)  # close the connection after N body bytes, once
    pause_after: dict[str, int] = field(default_factory=dict)  # stall after N body bytes until `release` is set
    release: threading.Event = field(default_factory=threading.Event)
    corrupt_at: dict[str, int] = field(default_factory=dict)  # flip the byte at this offset, once (same size)
    fail: dict[str, list] = field(default_factory=dict)  # route -> [status, times left]

    def fail_route(self, route: str, status: int = 503, times: int = 1) -> None:
        """Answer `route` (model_info, tree, resolve, create_repo, preupload, commit) with `status` `times` times."""
        self.fail[route] = [status, times]

    def take_failure(self, route: str) -> int | None:
        entry = self.fail.get(route)
        if entry and entry[1] > 0:
            entry[1] -= 1
            return entry[0]
        return None


class HubServer:
    """The server plus its state. Thread-safe enough for one client process at a time."""

    def __init__(self, tokens: dict[str, str] | None = None, host: str = "127.0.0.1", port: int = 0):
        self.tokens = dict(tokens or {})  # token -> "read" | "write"
        self.repos: dict[str, Repo] = {}
        self.faults = Faults()
        self.served: dict[tuple[str, str], int] = defaultdict(int)  # (repo_id, path) -> body bytes sent
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), never headers
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._counter = 0

    # --- lifecycle ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hubserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.faults.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- repo store ---------------------------------------------------------------------------------
    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        repo = Repo(repo_id=repo_id, private=private)
        self.repos[repo_id] = repo
        return repo

    def commit(self, repo_id: str, files: dict[str, Blob | None], message: str = "commit", branch: str = "main") -> str:
        """Commit files (None deletes) on top of `branch`; returns the new commit id."""
        repo = self.repos[repo_id]
        with self.lock:
            parent = repo.resolve(branch)
            tree = dict(parent.files) if parent else {}
            for path, blob in files.items():
                if blob is None:
                    tree.pop(path, None)
                else:
                    tree[path] = blob
            self._counter += 1
            seed = json.dumps(
                [
                    parent.oid if parent else None,
                    message,
                    self._counter,
                    sorted((p, b.git_oid) for p, b in tree.items()),
                ]
            )
            oid = hashlib.sha1(seed.encode()).hexdigest()
            repo.commits.append(
                Commit(
                    oid=oid, message=message, files=tree, date=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
                )
            )
            repo.branches[branch] = oid
        return oid

    def add_repo_from_dir(
        self, repo_id: str, folder: Path, private: bool = False, extra: dict[str, bytes] | None = None
    ) -> str:
        """Serve every file under `folder` (plus `extra` path -> bytes) as one commit; returns its id."""
        folder = Path(folder)
        files: dict[str, Blob | None] = {}
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                rel = p.relative_to(folder).as_posix()
                files[rel] = Blob.from_file(p, lfs=_is_lfs(rel, p.stat().st_size))
        for rel, data in (extra or {}).items():
            files[rel] = Blob.from_bytes(data, lfs=_is_lfs(rel, len(data)))
        self.create_repo(repo_id, private=private)
        return self.commit(repo_id, files, message="initial commit")

    def head(self, repo_id: str, branch: str = "main") -> Commit | None:
        repo = self.repos.get(repo_id)
        return repo.resolve(branch) if repo else None

    # --- counters -----------------------------------------------------------------------------------
    def served_bytes(self, repo_id: str, path: str | None = None) -> int:
        with self.lock:
            if path is not None:
                return self.served[(repo_id, path)]
            return sum(n for (r, _), n in self.served.items() if r == repo_id)

    def served_by_file(self, repo_id: str) -> dict[str, int]:
        with self.lock:
            return {p: n for (r, p), n in self.served.items() if r == repo_id}

    def reset_counters(self) -> None:
        with self.lock:
            self.served.clear()
            self.requests.clear()


def _is_lfs(path: str, size: int) -> bool:
    return size >= LFS_MIN_SIZE or path.endswith(LFS_SUFFIXES)


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


def _make_handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        server_state = hub

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: HubServer

    def log_message(self, format, *args) -> None:  # quiet: tests read `hub.requests`
        pass

    # --- plumbing -----------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        hub = self.server_state
        split = urlsplit(self.path)
        raw_path, query = split.path, parse_qs(split.query)
        body = self._read_body() if method == "POST" else b""
        status = 500
        try:
            route, handler, args = self._route(method, raw_path)
            fault = hub.faults.take_failure(route)
            if fault is not None:
                raise _HubError(fault, f"injected failure on {route}")
            status = handler(method, query, body, *args) or 200
        except _HubError as err:
            status = err.status
            headers = {"X-Error-Message": err.message, **({"X-Error-Code": err.code} if err.code else {})}
            self._send_json({"error": err.message, **err.extra}, status, headers, head=method == "HEAD")
        except (BrokenPipeError, ConnectionResetError):
            status = 499
            self.close_connection = True
        with hub.lock:
            hub.requests.append((method, raw_path, status))

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def _route(self, method: str, raw: str):
        parts = raw.strip("/").split("/")
        if raw == "/api/repos/create" and method == "POST":
            return "create_repo", self._create_repo, ()
        if raw == "/api/validate-yaml" and method == "POST":
            return "validate_yaml", self._validate_yaml, ()
        if raw == "/api/whoami-v2" and method == "GET":
            return "whoami", self._whoami, ()
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id = f"{unquote(parts[2])}/{unquote(parts[3])}"
            rest = parts[4:]
            if not rest and method == "GET":
                return "model_info", self._model_info, (repo_id, "main")
            if len(rest) == 2 and rest[0] == "revision" and method == "GET":
                return "model_info", self._model_info, (repo_id, unquote(rest[1]))
            if len(rest) >= 2 and rest[0] == "tree" and method == "GET":
                return "tree", self._tree, (repo_id, unquote(rest[1]), unquote("/".join(rest[2:])))
            if len(rest) == 2 and rest[0] == "preupload" and method == "POST":
                return "preupload", self._preupload, (repo_id, unquote(rest[1]))
            if len(rest) == 2 and rest[0] == "commit" and method == "POST":
                return "commit", self._commit, (repo_id, unquote(rest[1]))
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id = f"{unquote(parts[0])}/{unquote(parts[1])}"
            return "resolve", self._resolve, (repo_id, unquote(parts[3]), unquote("/".join(parts[4:])))
        raise _HubError(404, f"no route for {method} {raw}")

    def _send_json(self, payload, status: int = 200, headers: dict | None = None, head: bool = False) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    # --- auth ---------------------------------------------------------------------------------------
    def _token_role(self) -> str | None:
        """The role of the request's token; a token the server does not know is a 401, like the Hub."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        role = self.server_state.tokens.get(token)
        if role is None:
            raise _HubError(401, "Invalid credentials in Authorization header")
        return role

    def _readable_repo(self, repo_id: str) -> Repo:
        role = self._token_role()
        repo = self.server_state.repos.get(repo_id)
        if repo is None or (repo.private and role is None):
            # The Hub answers a private repo without auth exactly like a missing one.
            raise _HubError(401 if role is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def _writable_repo(self, repo_id: str) -> Repo:
        role = self._token_role()
        if role is None:
            raise _HubError(401, "You must be authenticated to write")
        if role != "write":
            raise _HubError(403, f"You don't have the rights to write to {repo_id}")
        repo = self.server_state.repos.get(repo_id)
        if repo is None:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit_of(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    # --- read routes --------------------------------------------------------------------------------
    def _model_info(self, method, query, body, repo_id: str, rev: str) -> None:
        repo = self._readable_repo(repo_id)
        commit = self._commit_of(repo, rev)
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path, blob in sorted(commit.files.items()):
            entry: dict = {"rfilename": path}
            if blobs:
                entry.update(size=blob.size, blobId=blob.git_oid)
                if blob.lfs:
                    entry["lfs"] = {
                        "size": blob.size,
                        "sha256": blob.sha256,
                        "pointerSize": len(_lfs_pointer(blob.sha256, blob.size)),
                    }
            siblings.append(entry)
        self._send_json(
            {
                "_id": repo_id,
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit.oid,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "lastModified": commit.date,
                "createdAt": repo.commits[0].date,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "library_name": None,
                "siblings": siblings,
            }
        )

    def _tree(self, method, query, body, repo_id: str, rev: str, prefix: str) -> None:
        repo = self._readable_repo(repo_id)
        commit = self._commit_of(repo, rev)
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = prefix.strip("/")
        entries, dirs = [], set()
        for path, blob in sorted(commit.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rel = path[len(prefix) + 1 :] if prefix else path
            parts = rel.split("/")
            for i in range(1, len(parts)):
                d = "/".join(([prefix] if prefix else []) + parts[:i])
                if (recursive or i == 1) and d not in dirs:
                    dirs.add(d)
                    entries.append(
                        {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                    )
            if not recursive and len(parts) > 1:
                continue
            entry = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": path}
            if blob.lfs:  # no "xetHash": the client must not take its Xet path against this server
                entry["lfs"] = {
                    "oid": blob.sha256,
                    "size": blob.size,
                    "pointerSize": len(_lfs_pointer(blob.sha256, blob.size)),
                }
            entries.append(entry)
        self._send_json(entries)

    def _resolve(self, method, query, body, repo_id: str, rev: str, path: str) -> None:
        repo = self._readable_repo(repo_id)
        commit = self._commit_of(repo, rev)
        blob = commit.files.get(path)
        if blob is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", commit.oid)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return 404
        start, end, status = 0, blob.size, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            first, _, last = rng[6:].split(",")[0].partition("-")
            start = int(first) if first else 0
            end = min(blob.size, int(last) + 1) if last else blob.size
            if start >= blob.size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{blob.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return 416
            status = 206
        self.send_response(status)
        self.send_header("ETag", f'"{blob.etag}"')
        self.send_header("X-Repo-Commit", commit.oid)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        if blob.lfs:
            self.send_header("X-Linked-Size", str(blob.size))
            self.send_header("X-Linked-ETag", f'"{blob.etag}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{blob.size}")
        self.end_headers()
        if method == "HEAD":
            return status
        self._stream(repo_id, path, blob, start, end)
        return status

    def _stream(self, repo_id: str, path: str, blob: Blob, start: int, end: int) -> None:
        hub = self.server_state
        faults = hub.faults
        pos = start
        for chunk in blob.read(start, end):
            pause_at = faults.pause_after.get(path)
            if pause_at is not None and pos < pause_at <= pos + len(chunk):
                head = chunk[: pause_at - pos]
                self._write_counted(repo_id, path, head)
                pos += len(head)
                chunk = chunk[len(head) :]
                faults.release.wait(timeout=120)
                if self._peer_closed():  # the client was killed while stalled: send nothing more
                    raise BrokenPipeError(f"client of {path} went away")
            drop_at = faults.drop_after.get(path)
            if drop_at is not None and pos + len(chunk) > drop_at >= pos:
                self._write_counted(repo_id, path, chunk[: drop_at - pos])
                faults.drop_after.pop(path, None)  # once
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            flip = faults.corrupt_at.get(path)
            if flip is not None and pos <= flip < pos + len(chunk):
                damaged = bytearray(chunk)
                damaged[flip - pos] ^= 0xFF
                chunk = bytes(damaged)
                faults.corrupt_at.pop(path, None)  # once
            if chunk:
                self._write_counted(repo_id, path, chunk)
                pos += len(chunk)

    def _peer_closed(self) -> bool:
        try:
            return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _write_counted(self, repo_id: str, path: str, data: bytes) -> None:
        if not data:
            return
        self.wfile.write(data)
        with self.server_state.lock:
            self.server_state.served[(repo_id, path)] += len(data)

    def _whoami(self, method, query, body) -> None:
        role = self._token_role()
        if role is None:
            raise _HubError(401, "Invalid username or password.")
        self._send_json({"type": "user", "name": "vss-test", "auth": {"accessToken": {"role": role}}})

    # --- write routes -------------------------------------------------------------------------------
    def _create_repo(self, method, query, body) -> None:
        hub = self.server_state
        role = self._token_role()
        if role != "write":
            raise _HubError(401 if role is None else 403, "You don't have the rights to create a repo")
        payload = json.loads(body or b"{}")
        repo_id = f"{payload.get('organization') or 'vss-test'}/{payload['name']}"
        if repo_id in hub.repos:
            raise _HubError(409, "You already created this model repo", extra={"url": f"{hub.url}/{repo_id}"})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        hub.create_repo(repo_id, private=private)
        # Like the Hub, a new repo starts with one commit holding .gitattributes.
        hub.commit(
            repo_id,
            {".gitattributes": Blob.from_bytes(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", lfs=False)},
            message="initial commit",
        )
        self._send_json({"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self, method, query, body) -> None:
        self._send_json({"errors": [], "warnings": []})

    def _preupload(self, method, query, body, repo_id: str, rev: str) -> None:
        repo = self._writable_repo(repo_id)
        head = repo.resolve(rev)
        files = []
        for f in json.loads(body)["files"]:
            remote = head.files.get(f["path"]) if head else None
            # Always "regular": this server has no LFS/Xet storage, so the content rides in the commit.
            files.append(
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": remote.git_oid if remote and not remote.lfs else None,
                }
            )
        self._send_json({"files": files, "commitOid": head.oid if head else None})

    def _commit(self, method, query, body, repo_id: str, rev: str) -> None:
        hub = self.server_state
        self._writable_repo(repo_id)
        message, files = "commit", {}
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary") or message
            elif key == "file":
                data = (
                    base64.b64decode(value["content"])
                    if value.get("encoding") == "base64"
                    else value["content"].encode()
                )
                files[value["path"]] = Blob.from_bytes(data, lfs=False)
            elif key in ("deletedFile", "deletedFolder"):
                files[value["path"]] = None
            else:
                raise _HubError(400, f"this test server does not store {key} entries (no LFS storage)")
        oid = hub.commit(repo_id, files, message=message, branch=rev)
        self._send_json({"success": True, "commitOid": oid, "commitUrl": f"{hub.url}/{repo_id}/commit/{oid}"})
