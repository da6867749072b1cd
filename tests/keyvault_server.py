"""A loopback Key Vault: the keys REST subset the Azure key provider uses, over real HTTPS.

Shapes follow azure-keyvault-keys' generated client (api-version 2025-07-01 and older) and
the service's public REST reference:

- Challenge auth: a request without a Bearer token gets 401 with ``WWW-Authenticate: Bearer
  authorization="https://login.microsoftonline.com/<tenant>", resource="https://vault.azure.net"``;
  then any Bearer token is accepted unless the test denied it (403, like a missing role).
- ``GET /keys`` (every key: a KeyItem with the versionless kid and the newest version's
  attributes and tags, paged with ``nextLink`` like the versions),
  ``GET /keys/{name}[/]`` (latest version), ``GET /keys/{name}/{version}``,
  ``GET /keys/{name}/versions`` (paged with ``nextLink``), ``POST /keys/{name}/create``,
  ``PATCH /keys/{name}/{version}``, ``POST /keys/{name}/{version}/wrapkey|unwrapkey``.
- Errors are ``{"error": {"code", "message", "innererror": {"code"}}}``. A disabled version
  refuses get and unwrapKey with 403 Forbidden / KeyDisabled, as the service does; wrapKey
  is a public-key operation the service still allows on a disabled key.
- Tags belong to one version: set by create's body ``"tags"``, replaced whole by a PATCH that
  carries ``"tags"``, returned at the top level of a KeyBundle and of each listed KeyItem
  (absent when there are none). More than 15 tags, a name over 512 or a value over 256
  characters is refused with 400 BadParameter.

Real RSA-2048 keys live in memory; wrapKey/unwrapKey do RSA-OAEP-256 with them.
Test controls: per-operation counters, 429 injection (a fraction of calls or the next N,
with a Retry-After), per-operation latency, denied tokens.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import random
import ssl
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CHALLENGE = f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="https://vault.azure.net"'
RBAC_DENIED = (
    "Caller is not authorized to perform action on resource.\r\n"
    "If role assignments were recently changed, please wait several minutes for role assignments to become effective."
)
ALL_KEY_OPS = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
MAX_TAGS, MAX_TAG_NAME_CHARS, MAX_TAG_VALUE_CHARS = 15, 512, 256
LOOPBACK = ipaddress.ip_address("127.0.0.1")
_OAEP_256 = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


class VaultError(Exception):
    """An error answer in Key Vault's JSON shape."""

    def __init__(self, status: int, code: str, message: str, inner: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.inner = status, code, message, inner
        self.headers = headers or {}

    def body(self) -> dict:
        error = {"code": self.code, "message": self.message}
        if self.inner:
            error["innererror"] = {"code": self.inner}
        return {"error": error}


@dataclass
class KeyVersion:
    version: str
    private_key: rsa.RSAPrivateKey
    key_ops: list[str]
    enabled: bool = True
    tags: dict[str, str] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    updated: int = field(default_factory=lambda: int(time.time()))


class KeyVaultServer:
    """Start with :meth:`start` (or as a context manager); ``url`` and ``cert_path`` then work."""

    def __init__(self, page_size: int = 25, seed: int = 0) -> None:
        self.page_size = page_size
        self.keys: dict[str, list[KeyVersion]] = {}
        #: Served operations by name (429s and 401 challenges are not in it).
        self.counts: Counter[str] = Counter()
        self.challenges = 0
        self.throttled = 0
        self.denied_tokens: set[str] = set()
        #: Operations refused with 403 ForbiddenByRbac, as for an identity with a role that
        #: allows reading keys but not the crypto operations (no Key Vault Crypto User).
        self.denied_operations: set[str] = set()
        self.latency_s: dict[str, float] = {}
        #: Requests being served now, and the most ever served at once, by operation.
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()
        #: When each served request of an operation started (time.monotonic()).
        self.started_at: dict[str, list[float]] = {}
        self._throttle_fraction = 0.0
        self._throttle_next = 0
        self._retry_after = "1"
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._tmp = tempfile.TemporaryDirectory(prefix="keyvault-server-")
        self.cert_path = str(Path(self._tmp.name) / "cert.pem")
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> KeyVaultServer:
        key_path = Path(self._tmp.name) / "key.pem"
        _write_self_signed(Path(self.cert_path), key_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, key_path)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._httpd.vault = self
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="keyvault-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        self._tmp.cleanup()

    def __enter__(self) -> KeyVaultServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._httpd.server_address[1]}"

    # -- test controls ---------------------------------------------------------------------

    def throttle(self, fraction: float = 0.0, next_calls: int = 0, retry_after: str = "1") -> None:
        """Answer 429 to ``fraction`` of calls (seeded, repeatable) and to the next ``next_calls``."""
        with self._lock:
            self._throttle_fraction, self._throttle_next, self._retry_after = fraction, next_calls, retry_after

    def set_enabled(self, kid: str, enabled: bool) -> None:
        """Flip a version behind the client's back, as an operator in the portal would."""
        name, version = urlparse(kid).path.split("/")[2:4]
        self._version(name, version).enabled = enabled

    def kid(self, name: str, version: str) -> str:
        return f"{self.url}/keys/{name}/{version}"

    # -- request handling ------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, headers, body: bytes) -> tuple[int, dict, dict]:
        """(status, JSON body, extra headers) for one request."""
        try:
            if "api-version" not in query:
                raise VaultError(400, "BadParameter", "The 'api-version' query parameter is missing.")
            self._authorize(headers.get("Authorization", ""))
            operation, handler = self._route(method, [p for p in path.split("/") if p])
            if operation in self.denied_operations:
                raise VaultError(403, "Forbidden", RBAC_DENIED, "ForbiddenByRbac")
            self._admit(operation)
            with self._lock:
                self.in_flight[operation] += 1
                self.max_in_flight[operation] = max(self.max_in_flight[operation], self.in_flight[operation])
                self.started_at.setdefault(operation, []).append(time.monotonic())
            try:
                time.sleep(self.latency_s.get(operation, 0.0))
                result = handler(json.loads(body) if body else {}, query)
            finally:
                with self._lock:
                    self.in_flight[operation] -= 1
            with self._lock:
                self.counts[operation] += 1
            return 200, result, {}
        except VaultError as error:
            return error.status, error.body(), error.headers
        except (ValueError, KeyError, TypeError):
            return 400, VaultError(400, "BadParameter", "The request body is not valid.").body(), {}

    def _authorize(self, authorization: str) -> None:
        if not authorization.startswith("Bearer "):
            with self._lock:
                self.challenges += 1
            missing = "AKV10000: Request is missing a Bearer or PoP token."
            raise VaultError(401, "Unauthorized", missing, headers={"WWW-Authenticate": CHALLENGE})
        if authorization[len("Bearer ") :] in self.denied_tokens:
            raise VaultError(403, "Forbidden", RBAC_DENIED, "ForbiddenByRbac")

    def _admit(self, operation: str) -> None:
        with self._lock:
            throttle = self._throttle_next > 0 or self._random.random() < self._throttle_fraction
            if not throttle:
                return
            self._throttle_next = max(0, self._throttle_next - 1)
            self.throttled += 1
            retry_after = self._retry_after
        raise VaultError(
            429,
            "Throttled",
            f"Request was not processed because too many requests were received. Reason: operation {operation}",
            headers={"Retry-After": retry_after},
        )

    def _route(self, method: str, parts: list[str]):
        if method == "GET" and parts == ["keys"]:
            return "list_keys", lambda body, q: self._list_keys(q)
        if len(parts) < 2 or parts[0] != "keys":
            raise VaultError(404, "NotFound", "The requested resource was not found.")
        name, rest = parts[1], parts[2:]
        if method == "GET" and not rest:
            return "get_key", lambda body, q: self._get(name, None)
        if method == "GET" and rest == ["versions"]:
            return "list_versions", lambda body, q: self._list_versions(name, q)
        if method == "POST" and rest == ["create"]:
            return "create_key", lambda body, q: self._create(name, body)
        if method == "GET" and len(rest) == 1:
            return "get_key", lambda body, q: self._get(name, rest[0])
        if method == "PATCH" and len(rest) == 1:
            return "update_key", lambda body, q: self._update(name, rest[0], body)
        if method == "POST" and len(rest) == 2 and rest[1] == "wrapkey":
            return "wrap_key", lambda body, q: self._wrap(name, rest[0], body)
        if method == "POST" and len(rest) == 2 and rest[1] == "unwrapkey":
            return "unwrap_key", lambda body, q: self._unwrap(name, rest[0], body)
        raise VaultError(405, "MethodNotAllowed", f"{method} is not supported on this resource.")

    # -- operations ------------------------------------------------------------------------

    def _versions(self, name: str) -> list[KeyVersion]:
        versions = self.keys.get(name)
        if not versions:
            raise VaultError(404, "KeyNotFound", f"A key with (name/id) {name} was not found in this key vault.")
        return versions

    def _version(self, name: str, version: str | None) -> KeyVersion:
        versions = self._versions(name)
        if not version:
            return versions[-1]
        for candidate in versions:
            if candidate.version == version:
                return candidate
        raise VaultError(404, "KeyNotFound", f"A key with (name/id) {name}/{version} was not found in this key vault.")

    def _get(self, name: str, version: str | None) -> dict:
        found = self._version(name, version)
        _refuse_if_disabled(found, "get")
        return self._bundle(name, found)

    def _list_keys(self, query: dict) -> dict:
        """Every key, in the order they were created (the service promises no order)."""
        with self._lock:
            newest = [(name, versions[-1]) for name, versions in self.keys.items() if versions]
        page, next_link = self._page(newest, query, f"{self.url}/keys")
        items = [{"kid": f"{self.url}/keys/{name}", "attributes": _attributes(v), **_tags(v)} for name, v in page]
        return {"value": items, "nextLink": next_link}

    def _list_versions(self, name: str, query: dict) -> dict:
        versions = self._versions(name)
        page, next_link = self._page(versions, query, f"{self.url}/keys/{name}/versions")
        items = [{"kid": self.kid(name, v.version), "attributes": _attributes(v), **_tags(v)} for v in page]
        return {"value": items, "nextLink": next_link}

    def _page(self, items: list, query: dict, link: str) -> tuple[list, str | None]:
        """One page of ``items`` and the link to the next (``$skiptoken`` is the offset)."""
        size = int(query.get("maxresults", [self.page_size])[0])
        start = int(query.get("$skiptoken", ["0"])[0])
        if start + size >= len(items):
            return items[start : start + size], None
        params = urlencode({"api-version": query["api-version"][0], "$skiptoken": start + size, "maxresults": size})
        return items[start : start + size], f"{link}?{params}"

    def _create(self, name: str, body: dict) -> dict:
        if body.get("kty") not in ("RSA", "RSA-HSM"):
            raise VaultError(400, "BadParameter", "This test vault creates RSA keys only.")
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=int(body.get("key_size") or 2048))
        version = KeyVersion(uuid.uuid4().hex, private_key, body.get("key_ops") or list(ALL_KEY_OPS))
        version.enabled = body.get("attributes", {}).get("enabled", True)
        version.tags = _checked_tags(body.get("tags") or {})
        with self._lock:
            self.keys.setdefault(name, []).append(version)
        return self._bundle(name, version)

    def _update(self, name: str, version: str, body: dict) -> dict:
        found = self._version(name, version)
        if "enabled" in body.get("attributes", {}):
            found.enabled = bool(body["attributes"]["enabled"])
        if body.get("key_ops"):
            found.key_ops = list(body["key_ops"])
        if "tags" in body:
            found.tags = _checked_tags(body["tags"] or {})
        found.updated = int(time.time())
        return self._bundle(name, found)

    def _wrap(self, name: str, version: str, body: dict) -> dict:
        found = self._version(name, version)
        _require_oaep_256(body)
        wrapped = found.private_key.public_key().encrypt(unb64url(body["value"]), _OAEP_256)
        return {"kid": self.kid(name, found.version), "value": b64url(wrapped)}

    def _unwrap(self, name: str, version: str, body: dict) -> dict:
        found = self._version(name, version)
        _refuse_if_disabled(found, "unwrapKey")
        _require_oaep_256(body)
        try:
            plaintext = found.private_key.decrypt(unb64url(body["value"]), _OAEP_256)
        except ValueError:
            raise VaultError(400, "BadParameter", "Unable to decrypt specified value with this key.") from None
        return {"kid": self.kid(name, found.version), "value": b64url(plaintext)}

    def _bundle(self, name: str, version: KeyVersion) -> dict:
        public = version.private_key.public_key().public_numbers()
        jwk = {
            "kid": self.kid(name, version.version),
            "kty": "RSA",
            "key_ops": version.key_ops,
            "n": b64url(_int_bytes(public.n)),
            "e": b64url(_int_bytes(public.e)),
        }
        return {"key": jwk, "attributes": _attributes(version), **_tags(version)}


def _attributes(version: KeyVersion) -> dict:
    return {
        "enabled": version.enabled,
        "created": version.created,
        "updated": version.updated,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": 90,
        "exportable": False,
    }


def _tags(version: KeyVersion) -> dict:
    return {"tags": dict(version.tags)} if version.tags else {}


def _checked_tags(tags: dict) -> dict[str, str]:
    too_long = [n for n, v in tags.items() if len(n) > MAX_TAG_NAME_CHARS or len(str(v)) > MAX_TAG_VALUE_CHARS]
    if len(tags) > MAX_TAGS or too_long:
        limits = f"{MAX_TAGS} tags, names of {MAX_TAG_NAME_CHARS} and values of {MAX_TAG_VALUE_CHARS} characters"
        raise VaultError(400, "BadParameter", f"Tags exceed the limits: at most {limits}.")
    return {str(n): str(v) for n, v in tags.items()}


def _refuse_if_disabled(version: KeyVersion, operation: str) -> None:
    if not version.enabled:
        raise VaultError(403, "Forbidden", f"Operation {operation} is not allowed on a disabled key.", "KeyDisabled")


def _require_oaep_256(body: dict) -> None:
    if body.get("alg") != "RSA-OAEP-256":
        raise VaultError(
            400, "BadParameter", f"This test vault supports alg RSA-OAEP-256 only, not {body.get('alg')!r}."
        )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the SDK's connections stay warm
    disable_nagle_algorithm = True  # headers and body go out as two writes: no delayed-ACK stall

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _serve(self) -> None:
        parsed = urlparse(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        vault = self.server.vault
        status, payload, headers = vault.handle(self.command, parsed.path, parse_qs(parsed.query), self.headers, body)
        raw = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format, *args) -> None:  # keep test output quiet
        pass


def _write_self_signed(cert_path: Path, key_path: Path) -> None:
    """A CA-flagged self-signed certificate for 127.0.0.1, usable as its own trust anchor."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyvault-test")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(LOOPBACK), x509.DNSName("localhost")]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
