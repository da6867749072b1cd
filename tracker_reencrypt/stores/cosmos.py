"""The Azure Cosmos DB NoSQL store: the tracker container, through ``azure-cosmos`` 4.x (sync).

``cosmos://<account host>[:port]/<database>/<container>`` names the container; from_url reads
the rest from the environment (and is the only code here that does):

- ``REENCRYPT_COSMOS_KEY``: an account key; unset or empty means Entra ID through
  ``azure.identity.DefaultAzureCredential`` (managed identity, workload identity, ``az login``...);
- ``REENCRYPT_COSMOS_CA_BUNDLE``: a PEM file of certificates to trust instead of the system's
  (a test server's self-signed certificate). TLS is verified on every endpoint, loopback too;
- ``REENCRYPT_COSMOS_PRIORITY``: ``low`` sends the sweep's document requests with priority-based
  execution's ``Low`` priority, so the account throttles them before the application's.

How the protocol maps onto Cosmos DB:

- Feed ranges are the SDK's EPK ranges (``read_feed_ranges``: one per physical partition),
  split further into EPK sub-ranges when ``min_count`` asks for more; the SDK scopes a query to
  a sub-range with the ``x-ms-start-epk``/``x-ms-end-epk`` headers. Servers that refuse
  sub-range queries (the test server) keep one range per physical partition.
- A scan page is one page of ``SELECT * FROM c`` scoped to the range; its continuation is the
  SDK's token, which survives partition splits (azure-cosmos >= 4.14.7).
- Bodies are the user's document: the system properties are removed and the ETag kept apart,
  so a replace writes back exactly the user's fields.
- Request charges: every HTTP response's ``x-ms-request-charge`` goes into ``cost``, failed and
  retried ones included, and so does every 429 the SDK retried by itself.
- The database and the tracker container are never created here: a missing one is a mistyped
  URL, refused with a ConfigError.
- The sweep's records live in a second container of the same database,
  ``<container>-reencrypt-state`` (partition key ``/kind``). It is created on opening only with
  ``create=True``; otherwise on the first record written, never by a read, so a command that only
  reads leaves the database as it found it (reads of a missing state container find nothing).
  Records are always sent at the default priority so leases and checkpoints do not starve.
- No azure exception leaves this module: they become the errors of tracker_reencrypt.errors.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ClientAuthenticationError, ServiceRequestError, ServiceResponseError
from azure.cosmos import CosmosClient, PartitionKey, SSLConfiguration, exceptions

from tracker_reencrypt.errors import (
    ConfigError, ConflictError, NotFoundError, StoreError, StoreUnavailableError, first_line, redact_url,
)
from tracker_reencrypt.stores import FeedRange, RequestCost, ScanPage, StoredDocument

log = logging.getLogger(__name__)

ENV_KEY = "REENCRYPT_COSMOS_KEY"
ENV_CA_BUNDLE = "REENCRYPT_COSMOS_CA_BUNDLE"
ENV_PRIORITY = "REENCRYPT_COSMOS_PRIORITY"

#: Properties Cosmos DB adds to every document; never part of a body we return or write.
SYSTEM_PROPERTIES = ("_rid", "_self", "_etag", "_attachments", "_ts")
STATE_CONTAINER_SUFFIX = "-reencrypt-state"
SCAN_QUERY = "SELECT * FROM c"

#: 429s: the SDK waits as the service's x-ms-retry-after-ms says, at most this often and long,
#: then the error reaches the sweep, which backs off as a whole (SDK defaults, made explicit).
THROTTLE_RETRIES = 9
THROTTLE_WAIT_MAX_S = 30
#: Connection failures: a few quick retries, then the caller hears about it.
CONNECTION_RETRIES = 3
#: Concurrent requests of create_many (seeding) and replace_many (a page of the sweep): the sync
#: SDK has no bulk executor.
CONCURRENT_REQUESTS = 8

#: The effective-partition-key space: "" to "FF" (exclusive). Hash v2 EPKs are 32 hex digits
#: whose first byte is masked to 0x3F (azure.cosmos.partition_key), so the data lie below 0x40.
EPK_MIN, EPK_MAX = "", "FF"
_EPK_DIGITS = 32
_HASH_V2_TOP = 0x40 << (8 * 15)

Priority = Literal["Low", "High"]


# -- URL and environment ---------------------------------------------------------------------


def parse_url(url: str) -> tuple[str, str, str]:
    """``cosmos://host[:port]/database/container`` -> (host[:port], database, container)."""
    example = "cosmos://<account>.documents.azure.com/<database>/<container>"
    if not url.startswith("cosmos://"):
        raise ConfigError(f"store URL {redact_url(url)!r} is not a Cosmos URL: use {example}")
    parts = urlsplit(url)
    names = [name for name in parts.path.split("/") if name]
    if not parts.hostname or len(names) != 2 or parts.query or parts.fragment or parts.username:
        raise ConfigError(f"Cosmos store URL {redact_url(url)!r} must name an account host, a database and a container: use {example}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"Cosmos store URL {redact_url(url)!r} has a bad port: use {example}") from None
    host = parts.hostname if port is None else f"{parts.hostname}:{port}"
    return host, names[0], names[1]


def parse_priority(text: str | None) -> Priority | None:
    """``low``/``high`` (any case) -> the SDK's ``Low``/``High``; empty -> None (service default)."""
    if not text:
        return None
    priority = {"low": "Low", "high": "High"}.get(text.strip().lower())
    if priority is None:
        raise ConfigError(f"{ENV_PRIORITY}={text!r} is not a priority: use low or high")
    return priority  # type: ignore[return-value]


# -- feed ranges -----------------------------------------------------------------------------


def _range_bounds(feed_range: FeedRange) -> tuple[str, str]:
    try:
        inner = feed_range["Range"]
        low, high = inner["min"], inner["max"]
        if not isinstance(low, str) or not isinstance(high, str) or not low < high:
            raise ValueError
        if inner.get("isMinInclusive", True) is not True or inner.get("isMaxInclusive", False) is not False:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise StoreError(f"feed range {feed_range!r} is not a Cosmos EPK range [min, max)") from None
    return low, high


def _epk_range(low: str, high: str) -> FeedRange:
    """The SDK's own dict form of an EPK range (FeedRangeInternalEpk.to_dict)."""
    return {"Range": {"min": low, "max": high, "isMinInclusive": True, "isMaxInclusive": False}}


def covers_whole_container(feed_range: FeedRange) -> bool:
    return _range_bounds(feed_range) == (EPK_MIN, EPK_MAX)


def _epk_value(epk: str, top: int) -> int:
    if epk == EPK_MIN:
        return 0
    if epk == EPK_MAX:
        return top
    return int(epk[:_EPK_DIGITS].ljust(_EPK_DIGITS, "0"), 16)


def split_feed_range(feed_range: FeedRange, parts: int) -> list[FeedRange]:
    """Split an EPK range of a hash-v2 container into ``parts`` disjoint sub-ranges covering it.

    The cut points are spread evenly over the part of the range real EPKs occupy (below 0x40 in
    the first byte) and kept only where strictly between the bounds as strings, the order EPKs
    are compared in, so the pieces always cover the range exactly once even for odd bounds.
    """
    low, high = _range_bounds(feed_range)
    if parts <= 1:
        return [_epk_range(low, high)]
    start = _epk_value(low, _HASH_V2_TOP)
    end = _epk_value(high, _HASH_V2_TOP)
    if high == EPK_MAX and end <= start:  # a range above the data: split the rest of the space
        end = 1 << (4 * _EPK_DIGITS)
    cuts: list[str] = []
    for index in range(1, parts):
        cut = f"{start + (end - start) * index // parts:0{_EPK_DIGITS}X}"
        if low < cut < high and (not cuts or cuts[-1] < cut):
            cuts.append(cut)
    bounds = [low, *cuts, high]
    return [_epk_range(a, b) for a, b in zip(bounds, bounds[1:])]


# -- errors ----------------------------------------------------------------------------------


def store_error_for(exc: Exception, doing: str, account: str, credential_kind: str) -> StoreError:
    """Our error for an azure exception raised while ``doing`` something on ``account``."""
    if isinstance(exc, exceptions.CosmosAccessConditionFailedError):
        return ConflictError(f"{doing} on Cosmos account {account}: it changed since it was read (ETag mismatch)")
    if isinstance(exc, exceptions.CosmosResourceExistsError):
        return ConflictError(f"{doing} on Cosmos account {account}: it already exists")
    if isinstance(exc, exceptions.CosmosResourceNotFoundError):
        return NotFoundError(f"{doing} on Cosmos account {account}: not found")
    if isinstance(exc, exceptions.CosmosHttpResponseError):
        status = exc.status_code
        if status == 401:
            fix = (
                f"set {ENV_KEY} to the account's current primary or secondary key"
                if credential_kind == "key"
                else f"check the identity's tenant, or set {ENV_KEY} to use an account key"
            )
            return StoreError(f"Cosmos account {account} rejected our credential (401) {doing}: {fix}")
        if status == 403:
            fix = (
                "check the account's firewall and network rules and that the key is not read-only"
                if credential_kind == "key"
                else "grant this identity the Cosmos DB Built-in Data Contributor role on the account "
                "(az cosmosdb sql role assignment create) and check the account's firewall"
            )
            return StoreError(f"Cosmos account {account} refused access (403: {first_line(exc.message)}) {doing}: {fix}")
        if status == 429:
            return StoreUnavailableError(
                f"Cosmos account {account} kept throttling (429) {doing} after the SDK's retries: "
                "lower the sweep's rate or give the container more RU/s"
            )
        if status >= 500 or status == 408:
            return StoreUnavailableError(f"Cosmos account {account} answered {status} {doing}: {first_line(exc.message)}")
        return StoreError(f"Cosmos account {account} answered {status} {doing}: {first_line(exc.message)}")
    if isinstance(exc, ClientAuthenticationError):
        return StoreError(
            f"no Entra ID token for Cosmos account {account} ({first_line(exc.message)}): "
            f"sign in (managed identity, az login) or set {ENV_KEY}"
        )
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return StoreUnavailableError(f"cannot reach Cosmos endpoint https://{account}/ {doing}: {first_line(exc.message)}")
    if isinstance(exc, exceptions.CosmosClientTimeoutError):
        return StoreUnavailableError(f"Cosmos account {account} timed out {doing}")
    if isinstance(exc, AzureError):
        return StoreError(f"Cosmos request {doing} on account {account} failed: {first_line(exc.message)}")
    return StoreError(f"Cosmos request {doing} on account {account} failed: {type(exc).__name__}: {first_line(exc)}")


def _strip_system_properties(document: Mapping[str, Any]) -> dict:
    return {name: value for name, value in document.items() if name not in SYSTEM_PROPERTIES}


def _stored(document: Mapping[str, Any]) -> StoredDocument:
    return StoredDocument(_strip_system_properties(document), document["_etag"])


# -- the document store ----------------------------------------------------------------------


class CosmosStore:
    """DocumentStore on a Cosmos DB NoSQL container."""

    def __init__(
        self,
        account: str,
        database: str,
        container: str,
        *,
        credential: Any,
        partition_key_field: str = "productId",
        ca_bundle: str | os.PathLike | None = None,
        priority: Priority | None = None,
        state_container: str | None = None,
        client_options: Mapping[str, Any] | None = None,
        create: bool = True,
    ) -> None:
        """``account`` is ``host[:port]``; ``credential`` an account key or a TokenCredential.

        ``client_options`` go to CosmosClient as they are, over our defaults (retry_* etc.).
        ``create``: make the state container as soon as :meth:`records` is opened, not only on
        the first record written (the default here, as before; open_store passes False unless
        the command creates stores). The database and the tracker container must exist either way.
        """
        self.account = account
        self.endpoint = f"https://{account}/"
        self.database_name = database
        self.container_name = container
        self.state_container_name = state_container or f"{container}{STATE_CONTAINER_SUFFIX}"
        self.partition_key_field = partition_key_field
        self.priority = priority
        self.cost = RequestCost()
        self._cost_lock = threading.Lock()
        self._credential_kind = "key" if isinstance(credential, str) else "entra"
        self._records: CosmosRecordStore | None = None
        self._create = create
        self._sub_ranges_work: bool | None = None
        self._writers: ThreadPoolExecutor | None = None
        self._writers_pid = 0

        # The SDK skips TLS verification for 127.0.0.1 and localhost (the emulator) unless an
        # SSLConfiguration is given: give one always, so verification is on everywhere.
        tls = SSLConfiguration()
        tls.SSLCaCerts = str(ca_bundle) if ca_bundle else True
        options: dict[str, Any] = {
            "ssl_config": tls,
            "connection_verify": tls.SSLCaCerts,
            "retry_throttle_total": THROTTLE_RETRIES,
            "retry_throttle_backoff_max": THROTTLE_WAIT_MAX_S,
            "retry_total": CONNECTION_RETRIES,
            "retry_connect": CONNECTION_RETRIES,
            "retry_read": CONNECTION_RETRIES,
            "raw_response_hook": self._count_response,
            **(client_options or {}),
        }
        if isinstance(credential, str):
            try:
                base64.b64decode(credential, validate=True)
            except ValueError:
                raise ConfigError(f"the account key for Cosmos account {account} is not base64: "
                                  f"set {ENV_KEY} to a key as the portal or `az cosmosdb keys list` shows it") from None
        with self._translated("connecting"):
            # The constructor already reads the account (its regions) over the network.
            self._client = CosmosClient(self.endpoint, credential=credential, **options)
        try:
            properties = self._read_own_container(database, container, partition_key_field)
        except BaseException:
            self._client.close()
            raise
        key = properties["partitionKey"]
        self._partition_kind = key.get("kind", "Hash")
        self._partition_version = key.get("version", 1)

    def _read_own_container(self, database: str, container: str, partition_key_field: str) -> dict:
        self._database = self._client.get_database_client(database)
        self._container = self._database.get_container_client(container)
        try:
            with self._translated(f"reading container {database}/{container}"):
                properties = self._container.read()
        except NotFoundError:
            self._refuse_missing_database(database, container)
            raise ConfigError(
                f"container {database}/{container} does not exist on Cosmos account {self.account}: check the "
                f"container in the store URL, or create it with partition key /{partition_key_field}"
            ) from None
        paths = (properties.get("partitionKey") or {}).get("paths")
        if paths != [f"/{partition_key_field}"]:
            raise ConfigError(
                f"container {database}/{container} is partitioned by {paths}, "
                f"not /{partition_key_field}: set the partition key field to match"
            )
        return properties

    def _refuse_missing_database(self, database: str, container: str) -> None:
        """Asked only once the container is missing: which of the two the URL got wrong."""
        try:
            with self._translated(f"reading database {database}"):
                self._database.read()
        except NotFoundError:
            url = redact_url(f"cosmos://{self.account}/{database}/{container}")
            raise ConfigError(f"database {database} of store {url} does not exist on Cosmos account {self.account}: "
                              "check the database in the store URL; reencrypt never creates databases") from None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        partition_key_field: str = "productId",
        environ: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> "CosmosStore":
        """Build the store a ``cosmos://`` URL names, with credential and options from ``environ``."""
        environ = os.environ if environ is None else environ
        account, database, container = parse_url(url)
        key = environ.get(ENV_KEY, "")
        if key:
            credential: Any = key
        else:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        ca_bundle = environ.get(ENV_CA_BUNDLE) or None
        if ca_bundle and not Path(ca_bundle).is_file():
            raise ConfigError(f"{ENV_CA_BUNDLE}={ca_bundle!r} is not a file: point it at a PEM certificate bundle")
        return cls(
            account,
            database,
            container,
            credential=credential,
            partition_key_field=partition_key_field,
            ca_bundle=ca_bundle,
            priority=parse_priority(environ.get(ENV_PRIORITY)),
            **kwargs,
        )

    def describe(self) -> str:
        return f"Cosmos container {self.database_name}/{self.container_name} on {self.account}"

    # -- plumbing --------------------------------------------------------------------------

    def _count_response(self, pipeline_response: Any) -> None:
        """Every HTTP response, retried 429s included (azure-core raw_response_hook)."""
        response = pipeline_response.http_response
        charge = response.headers.get("x-ms-request-charge")
        with self._cost_lock:
            if charge:
                try:
                    self.cost.request_units += float(charge)
                except ValueError:
                    pass
            if response.status_code == 429:
                self.cost.throttled += 1

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        try:
            yield
        except AzureError as exc:
            raise store_error_for(exc, doing, self.account, self._credential_kind) from None

    def _document_options(self) -> dict[str, Any]:
        return {"priority": self.priority} if self.priority else {}

    def partition_key_of(self, body: dict) -> Any:
        """The partition key value, as stored (the protocol's str for string keys)."""
        try:
            return body[self.partition_key_field]
        except KeyError:
            raise StoreError(f"document {body.get('id')!r} has no partition key field {self.partition_key_field!r}") from None

    # -- ranges and scans --------------------------------------------------------------------

    def feed_ranges(self, min_count: int = 1) -> list[FeedRange]:
        """One range per physical partition, split into EPK sub-ranges up to ``min_count``.

        Splitting needs a hash-v2 partition key (the default since azure-cosmos 4.x) and a
        service that scopes queries to EPK sub-ranges; otherwise the physical ranges come back
        as they are, which may be fewer than ``min_count``.
        """
        with self._translated("reading feed ranges"):
            physical = list(self._container.read_feed_ranges(force_refresh=True))
        if min_count <= len(physical) or not self._can_split(physical[0]):
            return physical
        per_range = -(-min_count // len(physical))
        return [piece for feed_range in physical for piece in split_feed_range(feed_range, per_range)]

    def _can_split(self, sample: FeedRange) -> bool:
        if self._partition_kind not in ("Hash", "MultiHash") or self._partition_version != 2:
            log.info("%s: partition key is not hash v2; feed ranges are not split below physical partitions",
                     self.describe())
            return False
        if self._sub_ranges_work is None:
            probe = split_feed_range(sample, 2)[0]
            try:
                # The scan's own query (a server may judge queries by their text), one item.
                next(self._container.query_items(SCAN_QUERY, feed_range=probe, max_item_count=1).by_page(), None)
                self._sub_ranges_work = True
            except exceptions.CosmosHttpResponseError as exc:
                if exc.status_code != 400:
                    raise store_error_for(exc, "probing feed-range queries", self.account, self._credential_kind) from None
                log.warning("%s refuses queries scoped to part of a partition (%s); feed ranges stay one per "
                            "physical partition", self.describe(), first_line(exc.message))
                self._sub_ranges_work = False
            except AzureError as exc:
                raise store_error_for(exc, "probing feed-range queries", self.account, self._credential_kind) from None
        return self._sub_ranges_work

    def scan(self, feed_range: FeedRange, continuation: str | None, page_size: int) -> ScanPage:
        options = {"max_item_count": page_size, **self._document_options()}
        if covers_whole_container(feed_range):
            # The same documents as feed_range=; Cosmos-protocol servers that reject feed-range
            # queries (the test server: 400 "missing partition keys") accept this one.
            options["enable_cross_partition_query"] = True
        else:
            options["feed_range"] = feed_range
        with self._translated(f"scanning {self.describe()}"):
            try:
                pages = self._container.query_items(SCAN_QUERY, **options).by_page(continuation)
                page = next(pages, None)
                documents = [_stored(document) for document in page] if page is not None else []
            except ValueError as exc:
                raise StoreError(f"continuation {continuation!r} does not fit this range of {self.describe()}: "
                                 f"{first_line(exc)}") from None
            return ScanPage(documents, (pages.continuation_token or None) if page is not None else None)

    # -- point operations --------------------------------------------------------------------

    def read(self, document_id: str, partition_key: Any) -> StoredDocument:
        with self._translated(f"reading document {document_id!r} (partition {partition_key!r})"):
            document = self._container.read_item(document_id, partition_key=partition_key, **self._document_options())
        return _stored(document)

    def create(self, body: dict) -> StoredDocument:
        with self._translated(f"creating document {body.get('id')!r}"):
            document = self._container.create_item(_strip_system_properties(body), **self._document_options())
        return _stored(document)

    def create_many(self, bodies: list[dict]) -> list[StoredDocument]:
        """Insert documents concurrently (not atomically: a failure leaves the others created)."""
        return self._concurrently(self.create, bodies)

    def replace_many(self, writes: list[tuple[dict, str]]) -> list[StoredDocument | None]:
        """Conditional replaces sent concurrently (the sync SDK has no bulk executor, and a
        transactional batch is limited to one partition key value)."""
        return self._concurrently(lambda write: self._replace_or_none(*write), writes)

    def _concurrently(self, operation, items: list) -> list:
        """``operation`` over ``items`` on a few threads (gateway requests are I/O bound), in
        order, every one finished before the first error is raised."""
        if len(items) <= 1:
            return [operation(item) for item in items]
        pool = self._writer_pool()
        futures = [pool.submit(operation, item) for item in items]
        wait(futures)
        return [future.result() for future in futures]

    def _writer_pool(self) -> ThreadPoolExecutor:
        """One pool per store and process, made on first use: threads do not survive Celery's fork."""
        if self._writers is None or self._writers_pid != os.getpid():
            self._writers = ThreadPoolExecutor(max_workers=CONCURRENT_REQUESTS, thread_name_prefix="cosmos-write")
            self._writers_pid = os.getpid()
        return self._writers

    def _replace_or_none(self, body: dict, etag: str) -> StoredDocument | None:
        try:
            return self.replace(body, etag)
        except (ConflictError, NotFoundError):
            return None

    def replace(self, body: dict, etag: str) -> StoredDocument:
        # A whole-document replace, not a patch: envelopes sit at arbitrary depths (inside arrays
        # too, where patch paths need indices that can shift under a concurrent writer), a patch
        # carries at most 10 operations, and it costs the same or a little more (replace + ~0.4
        # RU per operation); the ETag condition makes the replace exact either way.
        with self._translated(f"replacing document {body.get('id')!r}"):
            document = self._container.replace_item(
                body["id"],
                _strip_system_properties(body),
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
                **self._document_options(),
            )
        return _stored(document)

    def count(self) -> int:
        with self._translated(f"counting documents of {self.describe()}"):
            return sum(self._container.query_items("SELECT VALUE COUNT(1) FROM c", enable_cross_partition_query=True))

    def records(self) -> "CosmosRecordStore":
        if self._records is None:
            self._records = CosmosRecordStore(self, create=self._create)
        return self._records

    def close(self) -> None:
        if self._writers is not None and self._writers_pid == os.getpid():
            self._writers.shutdown()
        self._writers = None
        self._client.close()


# -- the sweep's records ---------------------------------------------------------------------

#: Characters a Cosmos id may not hold, escaped in record ids ('%' first, so it reverses).
_ID_ESCAPES = {"%": "%25", "/": "%2F", "\\": "%5C", "?": "%3F", "#": "%23"}


def record_item_id(record_id: str) -> str:
    return "".join(_ID_ESCAPES.get(char, char) for char in record_id)


class CosmosRecordStore:
    """RecordStore in ``<container>-reencrypt-state`` (partition key ``/kind``).

    An item is ``{"id": <escaped record id>, "kind", "recordId", "body"}``: the record's body
    sits in its own property so its fields never clash with Cosmos's.

    A missing state container is made here with ``create=True``, else by the first
    :meth:`create` (a sweep starting, an audit entry): until then every read finds nothing, as
    in an empty one, and a replace finds no record. A read never creates it.
    """

    def __init__(self, store: CosmosStore, *, create: bool) -> None:
        self._store = store
        self._translated = store._translated
        self._name = store.state_container_name
        self._where = f"Cosmos container {store.database_name}/{self._name} on {store.account}"
        self._container = store._database.get_container_client(self._name)
        try:
            with self._translated(f"reading container {store.database_name}/{self._name}"):
                self._check_partitioning(self._container.read())
        except NotFoundError:
            if create:
                self._create_container()

    def _check_partitioning(self, properties: dict) -> None:
        if (properties.get("partitionKey") or {}).get("paths") != ["/kind"]:
            raise StoreError(f"{self._where} is not partitioned by /kind: give the sweep's state its own container")

    def _create_container(self) -> None:
        database = self._store.database_name
        try:
            with self._translated(f"creating container {database}/{self._name}"):
                made = self._store._database.create_container(self._name, partition_key=PartitionKey(path="/kind"))
                properties = made.read()
        except ConflictError:  # another process created it first
            with self._translated(f"reading container {database}/{self._name}"):
                properties = self._container.read()
        except StoreError as exc:
            raise StoreError(
                f"cannot create {self._where} ({exc}): create it with partition key /kind "
                "(Entra ID data-plane roles cannot create containers)"
            ) from None
        self._check_partitioning(properties)

    def get(self, kind: str, record_id: str) -> tuple[dict, str]:
        with self._translated(f"reading {kind} {record_id!r}"):
            item = self._container.read_item(record_item_id(record_id), partition_key=kind)
        return item["body"], item["_etag"]

    def create(self, kind: str, record_id: str, body: dict) -> str:
        item = {"id": record_item_id(record_id), "kind": kind, "recordId": record_id, "body": body}
        try:
            return self._create_item(item)
        except NotFoundError:  # the first record written: the state container is made now
            self._create_container()
            return self._create_item(item)

    def _create_item(self, item: dict) -> str:
        with self._translated(f"creating {item['kind']} {item['recordId']!r}"):
            return self._container.create_item(item)["_etag"]

    def replace(self, kind: str, record_id: str, body: dict, etag: str) -> str:
        item = {"id": record_item_id(record_id), "kind": kind, "recordId": record_id, "body": body}
        with self._translated(f"replacing {kind} {record_id!r}"):
            return self._container.replace_item(
                item["id"], item, etag=etag, match_condition=MatchConditions.IfNotModified
            )["_etag"]

    def list(self, kind: str, prefix: str = "") -> list[tuple[str, dict, str]]:
        query = "SELECT * FROM c WHERE c.kind = @kind AND STARTSWITH(c.recordId, @prefix)"
        parameters = [{"name": "@kind", "value": kind}, {"name": "@prefix", "value": prefix}]
        try:
            with self._translated(f"listing {kind} records"):
                items = list(self._container.query_items(query, parameters=parameters, partition_key=kind))
        except NotFoundError:  # no state container yet: no record was ever written
            return []
        return sorted(((item["recordId"], item["body"], item["_etag"]) for item in items), key=lambda row: row[0])


__all__ = ["CosmosRecordStore", "CosmosStore", "parse_url", "split_feed_range", "store_error_for"]
