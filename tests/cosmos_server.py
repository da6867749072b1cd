"""A Cosmos-protocol server for tests: @vercel/cosmosdb-server, run with node on loopback.

The ``cosmos_server`` fixture (session-scoped) installs the pinned package with npm into
``tests/.cosmos-server/node_modules`` (ignored by git) on first use, makes a throw-away TLS
certificate for 127.0.0.1, starts ``tests/cosmos_server.js`` on a port the OS picks, waits until
the server answers, and stops it at teardown. Without node or npm the Cosmos tests are skipped
with the reason shown, except under ``CI=true``, where that is a failure.

The server accepts any key, keeps everything in memory, and has the gaps listed in
docs/COSMOS.md. Import the fixture where it is needed::

    from cosmos_server import cosmos_server  # noqa: F401  (pytest fixture)

(each module that imports it gets its own session-scoped copy; import it from a conftest.py
instead to share one server across modules).
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import json
import os
import select
import shutil
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.cosmos import CosmosClient, SSLConfiguration

PACKAGE = "@vercel/cosmosdb-server"
VERSION = "1.0.1"
#: The key the Cosmos DB emulator documents publicly; the server checks no key at all.
EMULATOR_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="

TESTS_DIR = Path(__file__).resolve().parent
INSTALL_PREFIX = TESTS_DIR / ".cosmos-server"
NODE_MODULES = INSTALL_PREFIX / "node_modules"
LAUNCHER = TESTS_DIR / "cosmos_server.js"
START_TIMEOUT_S = 20
INSTALL_TIMEOUT_S = 300


@dataclass(frozen=True)
class CosmosServer:
    """A running server: where it is, the key to use, and the certificate to trust."""

    host: str  # "127.0.0.1:<port>"
    key: str
    ca_bundle: Path

    @property
    def endpoint(self) -> str:
        return f"https://{self.host}/"

    def url(self, database: str, container: str) -> str:
        """The store URL naming a container on this server."""
        return f"cosmos://{self.host}/{database}/{container}"

    def env(self) -> dict[str, str]:
        """The variables CosmosStore.from_url reads to reach this server."""
        return {"REENCRYPT_COSMOS_KEY": self.key, "REENCRYPT_COSMOS_CA_BUNDLE": str(self.ca_bundle)}

    def client(self) -> CosmosClient:
        """The SDK reaching this server directly, trusting its certificate: what tests use to make
        and inspect databases and containers (our tool never creates them)."""
        tls = SSLConfiguration()
        tls.SSLCaCerts = str(self.ca_bundle)
        return CosmosClient(self.endpoint, credential=self.key, ssl_config=tls, connection_verify=str(self.ca_bundle))

    def throttle_next(self, count: int) -> None:
        """Make the next ``count`` document requests answer 429 (retry after 1 ms)."""
        request = urllib.request.Request(
            f"{self.endpoint}_test/throttle", data=json.dumps({"count": count}).encode(), method="POST"
        )
        with urllib.request.urlopen(request, context=_trusting(self.ca_bundle), timeout=5) as response:
            response.read()


def _unavailable(reason: str) -> None:
    """Skip, or fail under CI=true: CI must run the Cosmos tests, not quietly skip them."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Cosmos tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"Cosmos tests skipped: {reason}")


def _installed_version() -> str | None:
    manifest = NODE_MODULES / PACKAGE / "package.json"
    try:
        return json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def ensure_installed() -> Path:
    """The node_modules directory holding the pinned server, installing it if needed. Under a
    lock: test processes running side by side (pytest -n) must not run two npm installs into one
    prefix."""
    if _installed_version() == VERSION:
        return NODE_MODULES
    INSTALL_PREFIX.mkdir(parents=True, exist_ok=True)
    with open(INSTALL_PREFIX / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _install()


def _install() -> Path:
    if _installed_version() == VERSION:  # another process installed it while this one waited
        return NODE_MODULES
    npm = shutil.which("npm")
    if npm is None:
        _unavailable("npm is not on PATH (install Node.js 20+ to run them)")
    command = [
        npm, "install", "--prefix", str(INSTALL_PREFIX), "--no-save", "--no-package-lock",
        "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error", f"{PACKAGE}@{VERSION}",
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _unavailable(f"`npm install {PACKAGE}@{VERSION}` took over {INSTALL_TIMEOUT_S} s")
    if result.returncode != 0 or _installed_version() != VERSION:
        last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
        _unavailable(f"`npm install {PACKAGE}@{VERSION}` failed: {last_line}")
    return NODE_MODULES


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 valid for a day: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tracker-reencrypt test Cosmos server")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _trusting(ca_bundle: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_bundle))


def _wait_until_answering(server: CosmosServer, process: subprocess.Popen, deadline: float) -> None:
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(server.endpoint, context=_trusting(server.ca_bundle), timeout=2) as response:
                if response.status == 200:
                    return
        except OSError as exc:
            last_error = exc
        time.sleep(0.1)
    raise RuntimeError(f"the Cosmos test server at {server.endpoint} did not answer: {last_error}")


def start(directory: Path) -> tuple[CosmosServer, subprocess.Popen]:
    """Install if needed and start a server whose certificate lives in ``directory``."""
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not on PATH (install Node.js 20+ to run them)")
    modules = ensure_installed()
    cert_path, key_path = make_certificate(directory)
    log_path = directory / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [node, str(LAUNCHER), str(modules), str(cert_path), str(key_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT_S)
        first_line = process.stdout.readline() if ready else b""  # {"port": N}; EOF if node died
        if not first_line:
            raise RuntimeError(
                f"the Cosmos test server exited at start: {log_path.read_text(errors='replace')[-2000:]}"
            )
        server = CosmosServer(f"127.0.0.1:{json.loads(first_line)['port']}", EMULATOR_KEY, cert_path)
        _wait_until_answering(server, process, deadline)
    except BaseException:
        stop(process)
        raise
    return server, process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


@pytest.fixture(scope="session")
def cosmos_server(tmp_path_factory: pytest.TempPathFactory):
    """A running Cosmos-protocol server on 127.0.0.1 for the whole session."""
    server, process = start(tmp_path_factory.mktemp("cosmos-server"))
    try:
        yield server
    finally:
        stop(process)
