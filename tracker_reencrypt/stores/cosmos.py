"""The Azure Cosmos DB NoSQL store: the tracker container as a DocumentStore, through
``azure-cosmos`` 4.x (sync).

Its other parts sit beside it: cosmos_access (the ``cosmos://`` URL, the environment and the
client's options), cosmos_ranges (EPK feed ranges), cosmos_errors (azure errors as ours) and
cosmos_records (the sweep's records, in a second container).

How the protocol maps onto Cosmos DB:

- Feed ranges are the SDK's EPK ranges (``read_feed_ranges``: one per physical partition),
  split further into EPK sub-ranges when ``min_count`` asks for more; the SDK scopes a query to
  a sub-range with the ``x-ms-start-epk``/``x-ms-end-epk`` headers. Servers that refuse
  sub-range queries (the test server) keep one range per physical partition.
- A scan page is one page of ``SELECT * FROM c`` scoped to the range; its continuation is the
  SDK's token, which survives partition splits (azure-cosmos >= 4.14.7).
- A product range is a single-partition query, ``partition_key=`` set and the partition key
  (and the range's ids) also in the query's text, which Cosmos DB serves from the one logical
  partition and which servers that ignore ``partition_key=`` (the test server) still answer
  right. A large product is cut by id at the quantiles of a sample of its ids.
- Bodies are the user's document: the system properties are removed and the ETag kept apart,
  so a replace writes back exactly the user's fields.
- Request charges: every HTTP response's ``x-ms-request-charge`` goes into ``cost``, failed and
  retried ones included, and so does every 429 the SDK retried by itself.
- The database and the tracker container are never created here: a missing one is a mistyped
  URL, refused with a ConfigError.
- No azure exception leaves this module: they become the errors of tracker_reencrypt.errors.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError
from azure.cosmos import CosmosClient, exceptions

from tracker_reencrypt.errors import ConfigError, ConflictError, NotFoundError, StoreError, first_line, redact_url
from tracker_reencrypt.stores import (
    FeedRange,
    ProductRange,
    RequestCost,
    ScanPage,
    StoredDocument,
    StoreFacts,
    product_range_count,
)
from tracker_reencrypt.stores.cosmos_access import (
    ENV_PRIORITY,
    Priority,
    ca_bundle_from,
    check_account_key,
    cosmos_client_options,
    credential_from,
    parse_priority,
    parse_url,
)
from tracker_reencrypt.stores.cosmos_errors import store_error_for
from tracker_reencrypt.stores.cosmos_ranges import (
    covers_whole_container,
    id_cuts,
    id_sample_size,
    sample_ids,
    split_feed_range,
)
from tracker_reencrypt.stores.cosmos_records import STATE_CONTAINER_SUFFIX, CosmosRecordStore

log = logging.getLogger(__name__)

#: Properties Cosmos DB adds to every document; never part of a body we return or write.
SYSTEM_PROPERTIES = ("_rid", "_self", "_etag", "_attachments", "_ts")
SCAN_QUERY = "SELECT * FROM c"
#: Ids per page of the id-only pass that cuts a large product (they are small).
ID_PAGE_SIZE = 1_000

#: Concurrent requests of create_many (seeding) and replace_many (a page of the sweep): the sync
#: SDK has no bulk executor.
CONCURRENT_REQUESTS = 8


def _strip_system_properties(document: Mapping[str, Any]) -> dict:
    return {name: value for name, value in document.items() if name not in SYSTEM_PROPERTIES}


def _stored(document: Mapping[str, Any]) -> StoredDocument:
    written_at = document.get("_ts")
    return StoredDocument(
        _strip_system_properties(document),
        document["_etag"],
        written_at=float(written_at) if isinstance(written_at, int | float) else None,
    )


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
        self._distinct_works: bool | None = None
        #: The partition key property in query text: the container's path is /<field>, a
        #: top-level property (checked below), written c["<field>"] so any name is quoted.
        self._key = f"c[{json.dumps(partition_key_field)}]"
        self._writers: ThreadPoolExecutor | None = None
        self._writers_pid = 0

        options = cosmos_client_options(ca_bundle, self._count_response, client_options)
        check_account_key(credential, account)
        with self._translated("connecting"):
            # The constructor already reads the account (its regions) over the network.
            self._client = CosmosClient(self.endpoint, credential=credential, **options)
        try:
            properties = self._read_own_container(database, container, partition_key_field)
        except BaseException:
            self._client.close()
            raise
        key = properties["partitionKey"]
        self._partition_paths: list[str] = key.get("paths") or []
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
            raise ConfigError(
                f"database {database} of store {url} does not exist on Cosmos account {self.account}: "
                "check the database in the store URL; reencrypt never creates databases"
            ) from None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        partition_key_field: str = "productId",
        environ: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> CosmosStore:
        """Build the store a ``cosmos://`` URL names, with credential and options from ``environ``."""
        environ = os.environ if environ is None else environ
        account, database, container = parse_url(url)
        credential = credential_from(environ)
        ca_bundle = ca_bundle_from(environ)
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
            raise StoreError(
                f"document {body.get('id')!r} has no partition key field {self.partition_key_field!r}"
            ) from None

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
            log.info(
                "%s: partition key is not hash v2; feed ranges are not split below physical partitions", self.describe()
            )
            return False
        if self._sub_ranges_work is None:
            probe = split_feed_range(sample, 2)[0]
            try:
                # The scan's own query (a server may judge queries by their text), one item.
                next(self._container.query_items(SCAN_QUERY, feed_range=probe, max_item_count=1).by_page(), None)
                self._sub_ranges_work = True
            except exceptions.CosmosHttpResponseError as exc:
                if exc.status_code != 400:
                    raise store_error_for(
                        exc, "probing feed-range queries", self.account, self._credential_kind
                    ) from None
                log.warning(
                    "%s refuses queries scoped to part of a partition (%s); feed ranges stay one per "
                    "physical partition",
                    self.describe(),
                    first_line(exc.message),
                )
                self._sub_ranges_work = False
            except AzureError as exc:
                raise store_error_for(exc, "probing feed-range queries", self.account, self._credential_kind) from None
        return self._sub_ranges_work

    def products(self) -> list[str]:
        """The string values of the partition key. Documents keyed by another JSON value (a
        number, true/false, null) are in no product: a warning counts those values, and only a
        container range reads their documents."""
        products: set[str] = set()
        others: set[str] = set()
        for value in self._partition_key_values():
            if isinstance(value, str):
                products.add(value)
            else:
                others.add(json.dumps(value))
        if others:
            log.warning(
                "%s: %d partition key values are not strings (e.g. %s); their documents belong to no product "
                "and only a whole-container sweep reads them",
                self.describe(),
                len(others),
                min(others),
            )
        return sorted(products)

    def _partition_key_values(self) -> Iterator[Any]:
        """Every distinct partition key value (``SELECT DISTINCT``), or, where the server refuses
        DISTINCT (the test server's parser), every document's value, to be deduplicated here."""
        doing = f"listing the products of {self.describe()}"
        distinct = self._distinct_values(doing) if self._distinct_works is not False else None
        if distinct is not None:
            yield from distinct
            return
        with self._translated(doing):
            yield from self._container.query_items(
                f"SELECT VALUE {self._key} FROM c", enable_cross_partition_query=True
            )

    def _distinct_values(self, doing: str) -> list[Any] | None:
        """None where the server refuses DISTINCT with a 400 (said once, like :meth:`_can_split`)."""
        try:
            query = f"SELECT DISTINCT VALUE {self._key} FROM c"
            values = list(self._container.query_items(query, enable_cross_partition_query=True))
        except exceptions.CosmosHttpResponseError as exc:
            if exc.status_code != 400 or self._distinct_works:
                raise store_error_for(exc, doing, self.account, self._credential_kind) from None
            log.warning(
                "%s refuses SELECT DISTINCT (%s); products are listed by reading every document's "
                "partition key instead",
                self.describe(),
                first_line(exc.message),
            )
            self._distinct_works = False
            return None
        except AzureError as exc:
            raise store_error_for(exc, doing, self.account, self._credential_kind) from None
        self._distinct_works = True
        return values

    def product_ranges(self, product: str, documents_per_range: int) -> list[FeedRange]:
        """One range for a product of up to ``documents_per_range`` documents (counted from the
        index); a larger one is cut at the quantiles of a bounded sample of its ids, taken in one
        id-only pass over its partition, so the ranges hold about as many documents each."""
        ranges = product_range_count(self.count(product), documents_per_range)
        if ranges == 1:
            return ProductRange.cut(product, [])
        with self._translated(f"reading the ids of product {product!r} in {self.describe()}"):
            ids: Any = self._container.query_items(
                f"SELECT VALUE c.id FROM c WHERE {self._key} = @pk",
                parameters=[{"name": "@pk", "value": product}],
                partition_key=product,
                max_item_count=ID_PAGE_SIZE,
                **self._document_options(),
            )
            sample = sample_ids(ids, id_sample_size(ranges), random.Random())
        return ProductRange.cut(product, id_cuts(sample, ranges))

    def _product_query(self, product_range: ProductRange) -> tuple[str, list[dict[str, Any]]]:
        """The query text of a product range. It names the partition key although
        ``partition_key=`` scopes the query: a server that ignores that option (the test
        server) would otherwise return every partition's documents with matching ids."""
        conditions = [f"{self._key} = @pk"]
        parameters: list[dict[str, Any]] = [{"name": "@pk", "value": product_range.partition_key}]
        for bound, name, operator in ((product_range.id_min, "@lo", ">="), (product_range.id_max, "@hi", "<")):
            if bound is not None:
                conditions.append(f"c.id {operator} {name}")
                parameters.append({"name": name, "value": bound})
        return f"SELECT * FROM c WHERE {' AND '.join(conditions)}", parameters

    def scan(self, feed_range: FeedRange, continuation: str | None, page_size: int) -> ScanPage:
        options: dict[str, Any] = {"max_item_count": page_size, **self._document_options()}
        query = SCAN_QUERY
        product_range = ProductRange.of(feed_range)
        if product_range is not None:
            query, options["parameters"] = self._product_query(product_range)
            options["partition_key"] = product_range.partition_key
        elif covers_whole_container(feed_range):
            # The same documents as feed_range=; Cosmos-protocol servers that reject feed-range
            # queries (the test server: 400 "missing partition keys") accept this one.
            options["enable_cross_partition_query"] = True
        else:
            options["feed_range"] = feed_range
        return self._query_page(query, options, continuation, f"scanning {self.describe()}")

    def written_after(self, product: str, after: float, continuation: str | None, page_size: int) -> ScanPage:
        """A single-partition query on ``_ts`` (indexed by default), the partition key named in its
        text as every product query names it (docs/COSMOS.md, gap 2)."""
        options: dict[str, Any] = {
            "max_item_count": page_size,
            "parameters": [{"name": "@pk", "value": product}, {"name": "@after", "value": after}],
            "partition_key": product,
            **self._document_options(),
        }
        query = f"SELECT * FROM c WHERE {self._key} = @pk AND c._ts > @after"
        return self._query_page(
            query, options, continuation, f"reading recent writes of product {product!r} in {self.describe()}"
        )

    def _query_page(self, query: str, options: dict[str, Any], continuation: str | None, doing: str) -> ScanPage:
        """One page of a query from ``continuation``, with the continuation of the next."""
        with self._translated(doing):
            try:
                # by_page's pager carries continuation_token, which its annotation does not show.
                pages: Any = self._container.query_items(query, **options).by_page(continuation)
                page = next(pages, None)
                documents = [_stored(document) for document in page] if page is not None else []
            except ValueError as exc:
                raise StoreError(
                    f"continuation {continuation!r} does not fit this range of {self.describe()}: {first_line(exc)}"
                ) from None
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

    def count(self, product: str | None = None) -> int:
        if product is None:
            with self._translated(f"counting documents of {self.describe()}"):
                counts: Any = self._container.query_items(
                    "SELECT VALUE COUNT(1) FROM c", enable_cross_partition_query=True
                )
                return sum(counts)  # one number per physical partition
        # A single-partition query served from the index; its text names the partition key as
        # _product_query's does (and the test server answers COUNT only then).
        with self._translated(f"counting documents of product {product!r} in {self.describe()}"):
            counts = self._container.query_items(
                f"SELECT VALUE COUNT(1) FROM c WHERE {self._key} = @pk",
                parameters=[{"name": "@pk", "value": product}],
                partition_key=product,
            )
            return sum(counts)  # partial counts, should the service page the aggregate

    def facts(self) -> StoreFacts:
        return StoreFacts(
            backend="cosmos",
            partition_key_path=",".join(self._partition_paths),
            priority=self.priority,
            **self._throughput(),
        )

    def _throughput(self) -> dict[str, str]:
        """The container's own throughput, else its database's (shared); the reason when
        neither can be read (a serverless account has none; the test server serves no offers)."""
        reasons = []
        for level, owner in (("container", self._container), ("database, shared", self._database)):
            try:
                with self._translated(f"reading the {level.split(',')[0]} throughput of {self.describe()}"):
                    offer = owner.get_throughput()
            except NotFoundError:
                reasons.append(f"no {level.split(',')[0]} offer")
                continue
            except StoreError as error:
                reasons.append(first_line(error))
                break
            autoscale = getattr(offer, "auto_scale_max_throughput", None)
            if autoscale:
                return {"throughput": f"autoscale up to {autoscale} RU/s ({level})"}
            return {"throughput": f"{offer.offer_throughput} RU/s manual ({level})"}
        return {"throughput": "", "throughput_note": "not readable: " + "; ".join(reasons)}

    def records(self) -> CosmosRecordStore:
        if self._records is None:
            self._records = CosmosRecordStore(self, create=self._create)
        return self._records

    def close(self) -> None:
        if self._writers is not None and self._writers_pid == os.getpid():
            self._writers.shutdown()
        self._writers = None
        self._client.close()


__all__ = ["CosmosStore"]
