"""A Hugging Face Hub on 127.0.0.1, speaking the protocols huggingface_hub uses, for tests that must not mock it.

Downloads: ``HEAD`` / ``GET /{repo_id}/resolve/{revision}/{filename}`` as the Hub answers them. Small files come
back directly (``ETag`` = git blob sha1, ``X-Repo-Commit``, ``Content-Length``); LFS files (weights) get a ``302`` to
a second listener standing for the CDN, with ``X-Linked-Etag`` (sha256), ``X-Linked-Size`` and ``X-Repo-Commit``,
and are fetched from there (``Range`` support, ``Content-Disposition`` naming the file). Missing things get ``404``
with ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``. Uploads: ``/api/repos/create``,
``/api/validate-yaml``, ``preupload``, branch creation, model info, the LFS batch API (basic transfer + verify)
and the NDJSON ``commit`` endpoint, enough for ``HfApi.upload_folder`` without Xet (``HF_HUB_DISABLE_XET=1``).

Faults per repository (``HubServer.fault``): ``'500'`` (every request answered 500), ``'stall'`` (the request is
read, never answered), ``'truncate'`` (the CDN sends headers and only the first half of the file, then closes; a
resumed request for the rest gets nothing), ``'stall-body'`` (the CDN sends headers and the first half of the file,
then nothing more while keeping the connection open; a resumed request gets its headers and nothing), ``'corrupt'``
(one byte of the file flipped, size and advertised sha256 unchanged), ``'slow'`` (the file trickles out over about
``slow_seconds``), and two that fail once, then heal: ``'503-once'`` (the first request about the repository is
answered 503) and ``'truncate-once'`` (the first transfer is cut in the middle; the resumed request completes).
Repository ``'*'`` takes ``'500'`` or ``'stall'`` for every request on both listeners, whatever it is about.

Access (``HubServer.restrict``): a private repository answers requests without a token ``401`` with ``X-Error-Code:
RepoNotFound`` (the Hub does not reveal that it exists), a gated one ``401`` with ``GatedRepo``; with an
``Authorization: Bearer`` header both are served. ``/api/repos/create`` records the ``private`` flag it is sent.

The module also starts test processes against the server: ``hub_env`` (the variables huggingface_hub reads at
import) and ``run_client`` (a fresh interpreter running ``client_main`` on a list of actions, one JSON result each).
Only the standard library is imported at module level.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

LFS_SUFFIXES = ('.safetensors', '.bin', '.pth', '.pt', '.ckpt', '.onnx', '.msgpack', '.h5', '.pdparams')
FAULTS = ('500', 'stall', 'truncate', 'stall-body', 'corrupt', 'slow', '503-once', 'truncate-once')
_ONCE = {'503-once', 'truncate-once'}


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the Hub sends as ETag for non-LFS files."""
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    files: Dict[str, bytes]
    message: str


@dataclass
class Repo:
    repo_id: str
    commits: Dict[str, Commit] = field(default_factory=dict)
    refs: Dict[str, str] = field(default_factory=dict)  # branch or tag -> commit oid
    private: bool = False
    gated: bool = False

    def resolve(self, revision: str) -> Optional[Commit]:
        oid = self.refs.get(revision, revision)
        return self.commits.get(oid)


@dataclass
class Request:
    """One request the server saw."""
    method: str
    path: str
    port: int  # which listener: HubServer.port (the Hub) or HubServer.cdn_port
    start: float
    end: float = 0.0
    status: int = 0


class HubServer:
    """The loopback Hub: ``with HubServer() as hub: hub.commit('org/repo', {'model.safetensors': data})``.

    ``endpoint`` is the value for ``HF_ENDPOINT``. State (repos, requests, faults) is guarded by one lock; the
    listeners run in daemon threads of the calling process.
    """

    def __init__(self) -> None:
        self.repos: Dict[str, Repo] = {}
        self.lfs: Dict[str, bytes] = {}  # sha256 -> content (uploaded or committed LFS objects)
        self.requests: List[Request] = []
        self.faults: Dict[str, str] = {}
        self.slow_seconds = 1.5
        self.lock = threading.Lock()
        self._release = threading.Event()  # set on stop: stalled handlers give up
        self._servers: List[ThreadingHTTPServer] = []
        self._threads: List[threading.Thread] = []
        self._conns: set = set()
        self.port = 0
        self.cdn_port = 0

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> HubServer:
        self._release.clear()
        for _ in range(2):
            server = ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
            server.daemon_threads = True
            server.hub = self  # type: ignore[attr-defined]
            thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self.port = self._servers[0].server_address[1]
        self.cdn_port = self._servers[1].server_address[1]
        return self

    def stop(self) -> None:
        """Close the listeners and every open connection (the ports then refuse connections)."""
        self._release.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        with self.lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads = [], []

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f'http://127.0.0.1:{self.port}'

    @property
    def cdn(self) -> str:
        return f'http://127.0.0.1:{self.cdn_port}'

    # -- content ------------------------------------------------------------------------------------------------
    def commit(self, repo_id: str, files: Dict[str, bytes], branch: str = 'main', message: str = 'update',
               deletions: Tuple[str, ...] = ()) -> str:
        """Add / replace ``files`` on top of ``branch`` (created with the repo if needed); returns the commit oid."""
        with self.lock:
            return self._commit(repo_id, files, branch, message, deletions)

    def _commit(self, repo_id: str, files: Dict[str, bytes], branch: str, message: str,
                deletions: Tuple[str, ...] = ()) -> str:
        repo = self.repos.setdefault(repo_id, Repo(repo_id))
        parent = repo.resolve(branch) if branch in repo.refs else None
        tree = dict(parent.files) if parent else {}
        tree.update(files)
        for path in deletions:
            tree.pop(path, None)
        h = hashlib.sha1((parent.oid if parent else '').encode() + message.encode())
        for path in sorted(tree):
            h.update(path.encode() + b'\0' + hashlib.sha256(tree[path]).digest())
        oid = h.hexdigest()
        repo.commits[oid] = Commit(oid, tree, message)
        repo.refs[branch] = oid
        for path, data in files.items():
            if path.endswith(LFS_SUFFIXES):
                self.lfs[hashlib.sha256(data).hexdigest()] = data
        return oid

    def tag(self, repo_id: str, tag: str, revision: str = 'main') -> str:
        """Point ``tag`` at ``revision``'s commit; returns the commit oid."""
        with self.lock:
            repo = self.repos[repo_id]
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(f'{repo_id}@{revision}')
            repo.refs[tag] = commit.oid
            return commit.oid

    def files(self, repo_id: str, revision: str = 'main') -> Dict[str, bytes]:
        with self.lock:
            commit = self.repos[repo_id].resolve(revision)
            return dict(commit.files) if commit else {}

    def restrict(self, repo_id: str, private: Optional[bool] = None, gated: Optional[bool] = None) -> None:
        """Make ``repo_id`` private and / or gated (readable only with a token), or open it again with False."""
        with self.lock:
            repo = self.repos[repo_id]
            repo.private = repo.private if private is None else private
            repo.gated = repo.gated if gated is None else gated

    def fault(self, repo_id: str, kind: Optional[str]) -> None:
        """Make every request about ``repo_id`` fail as ``kind`` (one of ``FAULTS``), or heal it with None.
        ``repo_id='*'`` makes every request of any kind fail (``'500'`` or ``'stall'``)."""
        if kind is not None and kind not in FAULTS:
            raise ValueError(f'fault must be one of {FAULTS} or None, got {kind!r}')
        if repo_id == '*' and kind not in (None, '500', 'stall'):
            raise ValueError(f"repository '*' takes the faults '500' and 'stall', got {kind!r}")
        with self.lock:
            if kind is None:
                self.faults.pop(repo_id, None)
            else:
                self.faults[repo_id] = kind

    # -- what happened ------------------------------------------------------------------------------------------
    def seen(self, method: Optional[str] = None, contains: str = '') -> List[Request]:
        with self.lock:
            return [r for r in self.requests if (method is None or r.method == method) and contains in r.path]

    def downloads(self, repo_id: str, filename: str) -> int:
        """How many GET requests fetched (part of) the content of ``filename`` of ``repo_id``, at any revision
        (``/resolve/`` answered with the content, or the CDN; a redirect is not a fetch)."""
        with self.lock:
            oids = {hashlib.sha256(c.files[filename]).hexdigest()
                    for c in self.repos.get(repo_id, Repo(repo_id)).commits.values() if filename in c.files}
            direct = f'/{repo_id}/resolve/'
            return sum(
                1 for r in self.requests if r.method == 'GET' and (
                    (r.path.startswith(direct) and r.path.endswith('/' + filename) and r.status in (200, 206))
                    or any(r.path == f'/cdn/{repo_id}/{oid}' for oid in oids)))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'LoopbackHub/1.0'

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.hub.lock:
            self.hub._conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.hub.lock:
                self.hub._conns.discard(self.connection)

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _record(self) -> Request:
        req = Request(self.command, urllib.parse.urlsplit(self.path).path, self.server.server_address[1], time.time())
        with self.hub.lock:
            self.hub.requests.append(req)
        return req

    def _body(self) -> bytes:
        if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
            out = b''
            while True:
                size = int(self.rfile.readline().split(b';')[0].strip() or b'0', 16)
                if size == 0:
                    while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get('Content-Length') or 0))

    def _send(self, status: int, body: bytes = b'', headers: Optional[Dict[str, str]] = None,
              content_length: Optional[int] = None) -> None:
        self._req.status = status
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header('Content-Length', str(len(body) if content_length is None else content_length))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: Optional[Dict[str, str]] = None) -> None:
        self._send(status, json.dumps(obj).encode(), {'Content-Type': 'application/json', **(headers or {})})

    def _error(self, status: int, code: Optional[str], message: str, headers: Optional[Dict[str, str]] = None) -> None:
        extra = {'X-Error-Message': message, **(headers or {})}
        if code:
            extra['X-Error-Code'] = code
        self._json(status, {'error': message}, extra)

    def _fault_for(self, repo_id: Optional[str], transfer: bool = False) -> Optional[str]:
        """The fault of ``repo_id`` for this request; a fault that fails once heals as it is used (``'503-once'`` on
        any request, ``'truncate-once'`` on a transfer)."""
        if repo_id is None:
            return None
        with self.hub.lock:
            fault = self.hub.faults.get(repo_id)
            if fault == '503-once' or (fault == 'truncate-once' and transfer):
                del self.hub.faults[repo_id]
            return fault

    def _apply_fault(self, fault: Optional[str]) -> bool:
        """Handle the request-level faults; True when the request is answered (or abandoned) here."""
        if fault == '500':
            self._error(500, None, 'Internal Error - We\'re working hard to fix this as soon as possible!')
            return True
        if fault == '503-once':
            self._error(503, None, 'Service Unavailable')
            return True
        if fault == 'stall':
            self._req.status = -1
            self.hub._release.wait(timeout=300)
            self.close_connection = True
            return True
        return False

    def _access_denied(self, repo: Repo) -> bool:
        """Answer 401 as the Hub does for a private or gated repository asked without a token."""
        if not (repo.private or repo.gated) or self.headers.get('Authorization', '').startswith('Bearer '):
            return False
        if repo.gated:
            self._error(401, 'GatedRepo', f'Access to model {repo.repo_id} is restricted. You must have access to it '
                        f'and be authenticated to access it. Please log in.')
        else:
            self._error(401, 'RepoNotFound', 'Repository not found')
        return True

    def _dispatch(self) -> None:
        self._req = self._record()
        try:
            if not self._apply_fault(self._fault_for('*')):
                self._route()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self._req.end = time.time()

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    def _route(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        parts = split.path.split('/')[1:]
        if self.command in ('GET', 'HEAD') and len(parts) >= 5 and parts[2] == 'resolve':
            return self._resolve(f'{parts[0]}/{parts[1]}', urllib.parse.unquote(parts[3]),
                                 urllib.parse.unquote('/'.join(parts[4:])))
        if self.command == 'GET' and len(parts) == 4 and parts[0] == 'cdn':
            name = urllib.parse.parse_qs(split.query).get('filename', [parts[3]])[0]
            return self._cdn_get(f'{parts[1]}/{parts[2]}', parts[3], name)
        if self.command == 'PUT' and len(parts) == 3 and parts[:2] == ['cdn', 'upload']:
            return self._lfs_put(parts[2])
        if self.command == 'GET' and parts[:2] == ['api', 'models'] and (len(parts) == 4 or parts[4:5] == ['revision']):
            return self._model_info(f'{parts[2]}/{parts[3]}', urllib.parse.unquote('/'.join(parts[5:])) or 'main')
        if self.command != 'POST':
            return self._error(404, None, 'Not Found')
        if parts == ['api', 'repos', 'create']:
            return self._create_repo()
        if parts == ['api', 'validate-yaml']:
            self._body()
            return self._json(200, {'errors': [], 'warnings': []})
        if len(parts) >= 6 and parts[:2] == ['api', 'models'] and parts[4] in ('preupload', 'commit', 'branch'):
            repo_id, revision = f'{parts[2]}/{parts[3]}', urllib.parse.unquote('/'.join(parts[5:]))
            handler = {'preupload': self._preupload, 'commit': self._commit, 'branch': self._branch}[parts[4]]
            return handler(repo_id, revision)
        if len(parts) == 6 and parts[1].endswith('.git') and parts[2:5] == ['info', 'lfs', 'objects']:
            repo_id = f'{parts[0]}/{parts[1][:-len(".git")]}'
            return self._lfs_batch(repo_id) if parts[5] == 'batch' else self._lfs_verify()
        return self._error(404, None, 'Not Found')

    # -- downloads ----------------------------------------------------------------------------------------------
    def _resolve(self, repo_id: str, revision: str, filename: str) -> None:
        if self._apply_fault(self._fault_for(repo_id)):
            return
        with self.hub.lock:
            repo = self.hub.repos.get(repo_id)
            commit = repo.resolve(revision) if repo else None
            data = commit.files.get(filename) if commit else None
        if repo is None:
            return self._error(404, 'RepoNotFound', 'Repository not found')
        if self._access_denied(repo):
            return
        if commit is None:
            return self._error(404, 'RevisionNotFound', 'Invalid rev id: ' + revision)
        if data is None:
            return self._error(404, 'EntryNotFound', f'Entry not found: {filename}', {'X-Repo-Commit': commit.oid})
        headers = {'X-Repo-Commit': commit.oid, 'Accept-Ranges': 'bytes'}
        if filename.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            headers.update({
                'X-Linked-Etag': f'"{sha}"', 'X-Linked-Size': str(len(data)), 'ETag': f'"{git_blob_sha1(data)}"',
                'Location': f'{self.hub.cdn}/cdn/{repo_id}/{sha}?filename={urllib.parse.quote(filename)}',
            })
            return self._send(302, b'', headers)
        headers.update({'ETag': f'"{git_blob_sha1(data)}"', 'Content-Type': 'application/octet-stream'})
        return self._send(200, data, headers)

    def _cdn_get(self, repo_id: str, sha: str, filename: str) -> None:
        fault = self._fault_for(repo_id, transfer=True)
        if self._apply_fault(fault):
            return
        with self.hub.lock:
            data = self.hub.lfs.get(sha)
        if data is None:
            return self._error(404, None, 'NoSuchKey')
        size = len(data)
        start = 0
        range_header = self.headers.get('Range', '')
        if range_header.startswith('bytes='):
            start = int(range_header[len('bytes='):].split('-')[0] or 0)
        status, headers = 200, {'Content-Type': 'application/octet-stream', 'ETag': f'"{sha}"',
                                'Accept-Ranges': 'bytes', 'Content-Disposition': f'inline; filename="{filename}";'}
        if start:
            status = 206
            headers['Content-Range'] = f'bytes {start}-{size - 1}/{size}'
        body = data[start:]
        if fault == 'corrupt':
            mid = size // 2 - start
            if 0 <= mid < len(body):
                body = body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1:]
        self._req.status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if fault in ('truncate', 'truncate-once'):  # the connection dies at the middle of the file
            self.wfile.write(body[:max(0, size // 2 - start)])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == 'stall-body':  # the middle of the file, then silence on an open connection
            self.wfile.write(body[:max(0, size // 2 - start)])
            self.wfile.flush()
            self.hub._release.wait(timeout=300)
            self.close_connection = True
            return
        if fault == 'slow':
            pieces = 20
            step = -(-len(body) // pieces)
            for i in range(0, len(body), step):
                self.wfile.write(body[i:i + step])
                self.wfile.flush()
                time.sleep(self.hub.slow_seconds / pieces)
            return
        self.wfile.write(body)

    def _model_info(self, repo_id: str, revision: str) -> None:
        if self._apply_fault(self._fault_for(repo_id)):
            return
        repo = self._repo_or_404(repo_id)
        if repo is None or self._access_denied(repo):
            return
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, 'RevisionNotFound', 'Invalid rev id: ' + revision)
        self._json(200, {'id': repo_id, 'modelId': repo_id, 'sha': commit.oid, 'private': repo.private,
                         'siblings': [{'rfilename': name} for name in sorted(commit.files)]})

    # -- uploads ------------------------------------------------------------------------------------------------
    def _authorized(self) -> bool:
        if self.headers.get('Authorization', '').startswith('Bearer '):
            return True
        self._body()
        self._error(401, None, 'Invalid credentials in Authorization header')
        return False

    def _create_repo(self) -> None:
        if not self._authorized():
            return
        payload = json.loads(self._body() or b'{}')
        repo_id = f'{payload.get("organization") or "user"}/{payload["name"]}'
        with self.hub.lock:
            exists = repo_id in self.hub.repos
            if not exists:
                self.hub._commit(repo_id, {'.gitattributes': b'*.safetensors filter=lfs diff=lfs merge=lfs -text\n'},
                                 'main', 'initial commit')
                # huggingface_hub >= 1.x sends visibility, older releases private
                self.hub.repos[repo_id].private = payload.get('visibility', payload.get('private')) in ('private', True)
        if exists:  # the Hub's 409 carries the url too
            message = 'You already created this model repo'
            return self._json(409, {'error': message, 'url': f'{self.hub.endpoint}/{repo_id}'},
                              {'X-Error-Message': message})
        return self._json(200, {'url': f'{self.hub.endpoint}/{repo_id}', 'name': repo_id})

    def _repo_or_404(self, repo_id: str) -> Optional[Repo]:
        with self.hub.lock:
            repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, 'RepoNotFound', 'Repository not found')
        return repo

    def _preupload(self, repo_id: str, revision: str) -> None:
        if not self._authorized():
            return
        payload = json.loads(self._body())
        repo = self._repo_or_404(repo_id)
        if repo is None:
            return
        current = repo.resolve(revision)
        files = []
        for f in payload['files']:
            lfs = f['path'].endswith(LFS_SUFFIXES)
            old = current.files.get(f['path']) if current else None
            oid = None if old is None else (hashlib.sha256(old).hexdigest() if lfs else git_blob_sha1(old))
            files.append({'path': f['path'], 'uploadMode': 'lfs' if lfs else 'regular', 'shouldIgnore': False,
                          'oid': oid})
        self._json(200, {'files': files, 'commitOid': current.oid if current else None})

    def _branch(self, repo_id: str, branch: str) -> None:
        if not self._authorized():
            return
        payload = json.loads(self._body() or b'{}')
        repo = self._repo_or_404(repo_id)
        if repo is None:
            return
        with self.hub.lock:
            exists = branch in repo.refs
            start = repo.resolve(payload.get('startingPoint') or 'main')
            if not exists and start is not None:
                repo.refs[branch] = start.oid
        if exists:
            return self._error(409, None, f'Reference already exists: {branch}')
        if start is None:
            return self._error(404, 'RevisionNotFound', 'Invalid rev id: ' + str(payload.get('startingPoint')))
        self._json(200, {'success': True})

    def _lfs_batch(self, repo_id: str) -> None:
        if not self._authorized():
            return
        payload = json.loads(self._body())
        if self._repo_or_404(repo_id) is None:
            return
        objects = []
        for obj in payload['objects']:
            entry: Dict[str, Any] = {'oid': obj['oid'], 'size': obj['size'], 'authenticated': True}
            with self.hub.lock:
                known = obj['oid'] in self.hub.lfs
            if not known:
                entry['actions'] = {
                    'upload': {'href': f'{self.hub.cdn}/cdn/upload/{obj["oid"]}'},
                    'verify': {'href': f'{self.hub.endpoint}/{repo_id}.git/info/lfs/objects/verify'},
                }
            objects.append(entry)
        self._send(200, json.dumps({'transfer': 'basic', 'objects': objects}).encode(),
                   {'Content-Type': 'application/vnd.git-lfs+json'})

    def _lfs_put(self, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, None, f'content does not match oid {oid}')
        with self.hub.lock:
            self.hub.lfs[oid] = data
        self._send(200)

    def _lfs_verify(self) -> None:
        if not self._authorized():
            return
        payload = json.loads(self._body())
        with self.hub.lock:
            data = self.hub.lfs.get(payload['oid'])
        if data is None or len(data) != payload['size']:
            return self._error(404, None, f'object {payload["oid"]} not uploaded')
        self._json(200, {'success': True})

    def _commit(self, repo_id: str, revision: str) -> None:
        if not self._authorized():
            return
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if self._repo_or_404(repo_id) is None:
            return
        header = next((item['value'] for item in lines if item['key'] == 'header'), {})
        files: Dict[str, bytes] = {}
        deletions = []
        for item in lines:
            key, value = item['key'], item['value']
            if key == 'file':
                files[value['path']] = base64.b64decode(value['content'])
            elif key == 'lfsFile':
                with self.hub.lock:
                    data = self.hub.lfs.get(value['oid'])
                if data is None:
                    return self._error(400, None, f'LFS object {value["oid"]} of {value["path"]} was not uploaded')
                files[value['path']] = data
            elif key in ('deletedFile', 'deletedFolder'):
                deletions.append(value['path'])
        oid = self.hub.commit(repo_id, files, branch=revision, message=header.get('summary', ''),
                              deletions=tuple(deletions))
        self._json(200, {'success': True, 'commitOid': oid, 'commitUrl': f'{self.hub.endpoint}/{repo_id}/commit/{oid}',
                         'pullRequestUrl': None})


def closed_port_endpoint() -> str:
    """An http endpoint on 127.0.0.1 whose port was free a moment ago: connections to it are refused."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return f'http://127.0.0.1:{port}'


class Tripwire:
    """A bare TCP listener that counts connection attempts (and drops them): proof that nothing went to a port."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(('127.0.0.1', port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


# -- processes pointed at the server ---------------------------------------------------------------------------------
def hub_env(endpoint: str, hf_home: os.PathLike, offline: bool = False, timeout_s: int = 2,
            **extra: str) -> Dict[str, str]:
    """Environment for a process using ``endpoint`` as its Hub, with its cache in ``hf_home``.

    huggingface_hub reads these at import, hence processes rather than patched constants. Xet is disabled (the
    loopback speaks plain HTTP + LFS), tokens and telemetry are off unless ``extra`` sets them, and both the
    metadata and the download timeouts are ``timeout_s`` seconds.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGINGFACE_'))}
    env.update(
        HF_ENDPOINT=endpoint, HF_HOME=os.fspath(hf_home), HF_HUB_DISABLE_XET='1', HF_HUB_DISABLE_TELEMETRY='1',
        HF_HUB_ETAG_TIMEOUT=str(timeout_s), HF_HUB_DOWNLOAD_TIMEOUT=str(timeout_s),
        TORCH_HOME=os.path.join(os.fspath(hf_home), 'torch'),
        PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1',
    )
    if offline:
        env['HF_HUB_OFFLINE'] = '1'
    env.update(extra)
    return env


@dataclass
class ClientRun:
    """What one client process reported: a result dict per action (by id), its stderr split per action."""
    results: Dict[str, Dict[str, Any]]
    stderr: Dict[str, str]
    returncode: int
    raw_stderr: str

    def __getitem__(self, action_id: str) -> Dict[str, Any]:
        if action_id not in self.results:
            raise KeyError(f'no result for {action_id!r}; client stderr:\n{self.raw_stderr[-3000:]}')
        return self.results[action_id]


_MARK = '@@hub-client-action '


def start_client(actions: List[Dict[str, Any]], env: Dict[str, str], unprivileged: bool = False) -> subprocess.Popen:
    """Start ``client_main`` on ``actions`` in a fresh interpreter (see ``client_main`` for the action forms).
    ``unprivileged``: when this process is root, run the client without root's capabilities (``setpriv`` clears its
    bounding set), so that file modes bind it as they bind any user: a read-only folder is read-only to it."""
    code = (f'import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); '
            f'import hub_server; hub_server.client_main()')
    prefix: List[str] = []
    if unprivileged and os.geteuid() == 0:
        setpriv = shutil.which('setpriv')
        if setpriv is None:
            raise RuntimeError('running a client without root\'s capabilities needs setpriv (util-linux)')
        prefix = [setpriv, '--bounding-set=-all', '--']
    return subprocess.Popen([*prefix, sys.executable, '-c', code, json.dumps(actions)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_client(proc: subprocess.Popen, timeout: float) -> ClientRun:
    """Wait for a client (killing it after ``timeout`` s: a hang is a failure, reported with its stderr)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f'client still running after {timeout} s (a hang); stderr:\n{err[-3000:]}') from None
    results = {}
    for line in out.splitlines():
        if line.startswith('{'):
            r = json.loads(line)
            results[r['id']] = r
    stderr: Dict[str, str] = {}
    current = ''
    for line in err.splitlines(keepends=True):
        if line.startswith(_MARK):
            current = line[len(_MARK):].strip()
            continue
        stderr[current] = stderr.get(current, '') + line
    return ClientRun(results, stderr, proc.returncode, err)


def run_clients_together(action: Dict[str, Any], env: Dict[str, str], folder: os.PathLike, count: int = 4,
                         timeout: float = 120) -> List[ClientRun]:
    """Run ``action`` in ``count`` client processes that start it at the same moment: each touches
    ``folder/ready<i>`` and waits for ``folder/go``, which is made once all are ready (or after 120 s)."""
    folder = Path(folder)
    go = folder / 'go'
    procs = [start_client([{'id': 'wait', 'ready': str(folder / f'ready{i}'), 'go': str(go)}, action], env)
             for i in range(count)]
    deadline = time.time() + 120
    while not all((folder / f'ready{i}').exists() for i in range(count)) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()
    return [finish_client(p, timeout=timeout) for p in procs]


def run_client(actions: List[Dict[str, Any]], env: Dict[str, str], timeout: float = 90,
               unprivileged: bool = False) -> ClientRun:
    """Run ``client_main`` on ``actions`` in a fresh interpreter and collect its results."""
    return finish_client(start_client(actions, env, unprivileged), timeout)


def state_digest(state_dict: Dict[str, Any]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor: equal digests = bit-identical weights."""
    import torch
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f'{name}|{t.dtype}|{tuple(t.shape)}|'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def client_main() -> None:
    """Run the JSON list of actions given as the first argument, printing one JSON result line per action.

    Actions (each with an ``id``):
    - ``{"model": name, "kwargs": {...}}``: ``timm.create_model(name, **kwargs)``; the result carries ``ok``, the
      ``digest`` of its state dict, ``num_classes``, ``hf_hub_id`` / ``url`` / ``file`` / ``architecture`` of its
      pretrained_cfg, or ``error_type`` /
      ``error``, ``seconds`` (the whole action) and ``fetch_seconds`` (resolving the weights: what the timeouts bound).
    - ``{"cli": [args]}``: ``timm_ghost_cli.main(args)``; result ``ok`` (exit code 0), ``code`` and ``stdout``.
    - ``{"smp": arch, "encoder": "tu-NAME", "kwargs": {...}}``: ``segmentation_models_pytorch.<arch>(...)``; result
      ``digest`` of the encoder's state dict under timm's key names, its ``keys`` and ``hf_hub_id``.
    - ``{"env": {name: value or None}}``: set / unset environment variables read at call time (``HF_TOKEN``).
    - ``{"ready": path, "go": path}``: touch ``ready``, then wait (up to 120 s) for ``go`` to exist.
    - ``{"damage": path, "how": "truncate" | "edit"}``: cut the file to half its size, or invert its last 8 bytes.
    """
    actions = json.loads(sys.argv[1])
    import timm

    import timm_ghost  # noqa: F401  (registers the models)
    import timm_ghost_cli as cli
    from timm_ghost import ghostnet

    # the part of a load that the timeouts bound: resolving the weights to a local file (Hub, URL or cache), timed
    # on its own so that model construction on a loaded machine does not count against the bound
    fetch_seconds: List[float] = []
    prepare = ghostnet.prepare_pretrained

    def timed_prepare(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return prepare(*args, **kwargs)
        finally:
            fetch_seconds.append(time.perf_counter() - t0)

    ghostnet.prepare_pretrained = timed_prepare

    for action in actions:
        fetch_seconds.clear()
        print(_MARK + action['id'], file=sys.stderr, flush=True)
        result: Dict[str, Any] = {'id': action['id']}
        start = time.time()
        try:
            if 'ready' in action:
                Path(action['ready']).touch()
                while not Path(action['go']).exists() and time.time() - start < 120:
                    time.sleep(0.02)
                result['ok'] = Path(action['go']).exists()
            elif 'damage' in action:
                path = Path(action['damage'])
                data = path.read_bytes()
                path.write_bytes(data[:len(data) // 2] if action['how'] == 'truncate' else
                                 data[:-8] + bytes(b ^ 0xFF for b in data[-8:]))
                result['ok'] = True
            elif 'cli' in action:
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    code = cli.main(action['cli'])
                result.update(ok=code == 0, code=code, stdout=out.getvalue())
            elif 'smp' in action:
                import segmentation_models_pytorch as smp
                model = getattr(smp, action['smp'])(action['encoder'], **action.get('kwargs', {}))
                # the encoder's weights under timm's names (features_only flattens blocks.N to blocks_N)
                state = {k.replace('blocks_', 'blocks.', 1): v for k, v in model.encoder.model.state_dict().items()}
                result.update(ok=True, digest=state_digest(state), keys=sorted(state),
                              hf_hub_id=model.encoder.model.pretrained_cfg.get('hf_hub_id'))
            elif 'env' in action:
                for name, value in action['env'].items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
                result['ok'] = True
            else:
                model = timm.create_model(action['model'], **action.get('kwargs', {}))
                cfg = model.pretrained_cfg
                result.update(ok=True, digest=state_digest(model.state_dict()), num_classes=model.num_classes,
                              hf_hub_id=cfg.get('hf_hub_id'), url=cfg.get('url'), file=cfg.get('file'),
                              architecture=cfg.get('architecture'))
        except Exception as e:  # reported, not raised: the next action still runs
            result.update(ok=False, error_type=type(e).__name__, error=str(e))
        result['end'] = time.time()  # the server's clock too: compare with Request.start
        result['seconds'] = round(result['end'] - start, 3)
        result['fetch_seconds'] = round(sum(fetch_seconds), 3) if fetch_seconds else None
        print(json.dumps(result), flush=True)
        sys.stderr.flush()
