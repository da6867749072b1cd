"""A loopback Azure Resource Manager: the one Cosmos DB management call preflight's backup check
makes (coordinator/preflight/backup.py), over real HTTPS.

Shapes follow azure-mgmt-cosmosdb's generated client and ARM's public REST reference:

- ``GET /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DocumentDB/databaseAccounts/{name}
  ?api-version=...`` answers the account: ``id``, ``name``, ``type``, ``location``, ``kind`` and
  ``properties`` with ``documentEndpoint``, ``provisioningState`` and ``backupPolicy``
  (``{"type": "Continuous", "continuousModeProperties": {"tier": ...}}`` or ``{"type":
  "Periodic", "periodicModeProperties": {"backupIntervalInMinutes", "backupRetentionIntervalInHours",
  "backupStorageRedundancy"}}``). ARM matches path segments and names in any case.
- Errors are ``{"error": {"code", "message"}}``: 400 MissingApiVersionParameter; 401
  AuthenticationFailed without a Bearer token, InvalidAuthenticationToken for a token the test
  rejected; 403 AuthorizationFailed when the test denied the caller (a missing Reader role);
  404 ResourceGroupNotFound, ResourceNotFound for an account the test did not add, and
  ParentResourceNotFound for a child of one (ARM's answer for
  ``.../databaseAccounts/{missing}/sqlDatabases/...``).

Test controls: :meth:`add_account` (then :meth:`set_continuous`, :meth:`set_periodic`,
:meth:`set_document_endpoint`), :meth:`deny`, ``rejected_tokens``; every request's api-version
is kept in ``api_versions``, and its method and path in ``requests``.
"""

from __future__ import annotations

import json
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from keyvault_server import _write_self_signed

SUBSCRIPTION = "00000000-1111-2222-3333-444444444444"
RESOURCE_GROUP = "tracker-rg"
PROVIDER = "Microsoft.DocumentDB/databaseAccounts"
#: The caller's object id in AuthorizationFailed messages (ARM names the principal it refused).
CALLER = "9f4c6b1e-0000-4000-8000-00000000c0de"
CHALLENGE = 'Bearer authorization_uri="https://login.windows.net/", error="invalid_token"'


def resource_id(account: str, subscription: str = SUBSCRIPTION, resource_group: str = RESOURCE_GROUP) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/{PROVIDER}/{account}"


class ArmError(Exception):
    """An error answer in ARM's JSON shape."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


@dataclass
class Account:
    subscription: str
    resource_group: str
    name: str
    document_endpoint: str
    backup_policy: dict = field(default_factory=dict)
    location: str = "West Europe"
    #: The account's priority-based execution setting; None leaves the property out, as ARM
    #: does for accounts that never set it.
    priority_based_execution: bool | None = None

    @property
    def id(self) -> str:
        return resource_id(self.name, self.subscription, self.resource_group)

    def resource(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "type": PROVIDER,
            "location": self.location,
            "kind": "GlobalDocumentDB",
            "tags": {},
            "properties": {
                "provisioningState": "Succeeded",
                "documentEndpoint": self.document_endpoint,
                "databaseAccountOfferType": "Standard",
                "backupPolicy": self.backup_policy,
                **(
                    {}
                    if self.priority_based_execution is None
                    else {"enablePriorityBasedExecution": self.priority_based_execution}
                ),
            },
        }


class ArmServer:
    """Start with :meth:`start` (or as a context manager); ``url`` and ``cert_path`` then work."""

    def __init__(self) -> None:
        #: Accounts by their resource id, lower-cased (ARM ids are case-insensitive).
        self.accounts: dict[str, Account] = {}
        self.denied = False
        #: Bearer tokens answered with 401 InvalidAuthenticationToken (expired, another tenant...).
        self.rejected_tokens: set[str] = set()
        self.api_versions: list[str] = []
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._tmp = tempfile.TemporaryDirectory(prefix="arm-server-")
        self.cert_path = str(Path(self._tmp.name) / "cert.pem")
        self._httpd: _HttpServer | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ArmServer:
        key_path = Path(self._tmp.name) / "key.pem"
        _write_self_signed(Path(self.cert_path), key_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, key_path)
        self._httpd = _HttpServer(("127.0.0.1", 0), _Handler)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._httpd.arm = self
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="arm-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        self._tmp.cleanup()

    def __enter__(self) -> ArmServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start the server first"
        return f"https://127.0.0.1:{self._httpd.server_address[1]}"

    # -- test controls ---------------------------------------------------------------------

    def add_account(
        self,
        name: str = "tracker-cosmos",
        document_endpoint: str | None = None,
        subscription: str = SUBSCRIPTION,
        resource_group: str = RESOURCE_GROUP,
    ) -> str:
        """An account with continuous backup (30 days) at ``document_endpoint`` (by default
        Azure's ``https://<name>.documents.azure.com:443/``); returns its resource id."""
        endpoint = document_endpoint or f"https://{name}.documents.azure.com:443/"
        account = Account(subscription, resource_group, name, endpoint)
        with self._lock:
            self.accounts[account.id.lower()] = account
        self.set_continuous(account.id)
        return account.id

    def set_continuous(self, account_id: str, tier: str = "Continuous30Days") -> None:
        """Continuous backup (point-in-time restore), tier Continuous7Days or Continuous30Days."""
        self._account(account_id).backup_policy = {"type": "Continuous", "continuousModeProperties": {"tier": tier}}

    def set_periodic(
        self, account_id: str, interval_minutes: int = 240, retention_hours: int = 8, redundancy: str = "Geo"
    ) -> None:
        """Periodic backup (the service's default is every 240 minutes, kept 8 hours)."""
        self._account(account_id).backup_policy = {
            "type": "Periodic",
            "periodicModeProperties": {
                "backupIntervalInMinutes": interval_minutes,
                "backupRetentionIntervalInHours": retention_hours,
                "backupStorageRedundancy": redundancy,
            },
        }

    def set_document_endpoint(self, account_id: str, url: str) -> None:
        self._account(account_id).document_endpoint = url

    def deny(self, denied: bool = True) -> None:
        """Refuse every read with 403 AuthorizationFailed, as ARM does for a caller without Reader."""
        self.denied = denied

    def _account(self, account_id: str) -> Account:
        return self.accounts[account_id.lower()]

    # -- request handling ------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, headers) -> tuple[int, dict, dict]:
        """(status, JSON body, extra headers) for one request."""
        try:
            if "api-version" not in query:
                raise ArmError(
                    400,
                    "MissingApiVersionParameter",
                    "The api-version query parameter (?api-version=) is required for all requests.",
                )
            with self._lock:
                self.api_versions.append(query["api-version"][0])
                self.requests.append(f"{method} {path}")
            if not headers.get("Authorization", "").startswith("Bearer "):
                raise ArmError(
                    401,
                    "AuthenticationFailed",
                    "Authentication failed. The 'Authorization' header is missing.",
                    {"WWW-Authenticate": CHALLENGE},
                )
            if headers["Authorization"][len("Bearer ") :] in self.rejected_tokens:
                raise ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.")
            if method != "GET":
                raise ArmError(405, "MethodNotAllowed", f"The HTTP method '{method}' is not supported by this server.")
            return 200, self._get([p for p in path.split("/") if p], path), {}
        except ArmError as error:
            return error.status, error.body(), error.headers

    def _get(self, parts: list[str], path: str) -> dict:
        words = [p.lower() for p in parts]
        if len(parts) < 8 or words[0] != "subscriptions" or words[2] != "resourcegroups" or words[4] != "providers":
            raise ArmError(404, "NotFound", "The requested resource was not found.")
        if "/".join(words[5:7]) != PROVIDER.lower():
            raise ArmError(400, "InvalidResourceType", f"The resource type '{'/'.join(parts[5:7])}' is not served.")
        subscription, group, name = parts[1], parts[3], parts[7]
        if self.denied:
            scope = "/" + "/".join(parts[:8])
            raise ArmError(
                403,
                "AuthorizationFailed",
                f"The client '{CALLER}' with object id '{CALLER}' does not have authorization to perform action "
                f"'Microsoft.DocumentDB/databaseAccounts/read' over scope '{scope}' or the scope is invalid. "
                "If access was recently granted, please refresh your credentials.",
            )
        with self._lock:
            groups = {(a.subscription.lower(), a.resource_group.lower()) for a in self.accounts.values()}
            account = self.accounts.get(resource_id(name, subscription, group).lower())
        if (subscription.lower(), group.lower()) not in groups:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found.")
        if account is None:
            resource = f"{PROVIDER}/{name}"
            if len(parts) > 8:
                raise ArmError(
                    404,
                    "ParentResourceNotFound",
                    f"Can not perform requested operation on nested resource. Parent resource '{name}' not found.",
                )
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource '{resource}' under resource group '{group}' was not found. "
                "For more details please go to https://aka.ms/ARMResourceNotFoundFix",
            )
        if len(parts) > 8:
            raise ArmError(404, "NotFound", f"This test server serves no child resources of {path}.")
        return account.resource()


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    arm: ArmServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        parsed = urlparse(self.path)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        assert isinstance(self.server, _HttpServer)
        arm = self.server.arm
        status, payload, headers = arm.handle(self.command, parsed.path, parse_qs(parsed.query), self.headers)
        raw = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("x-ms-request-id", "00000000-0000-0000-0000-000000000000")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format, *args) -> None:  # keep test output quiet
        pass
