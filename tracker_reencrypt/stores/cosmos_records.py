"""The sweep's records on Cosmos DB: a RecordStore in a second container of the tracker's database.

The container is ``<container>-reencrypt-state`` (partition key ``/kind``). It is created on
opening only with ``create=True``; otherwise on the first record written, never by a read, so a
command that only reads leaves the database as it found it (reads of a missing state container
find nothing). Records are always sent at the default priority so leases and checkpoints do not
starve.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from azure.core import MatchConditions
from azure.cosmos import PartitionKey

from tracker_reencrypt.errors import ConflictError, NotFoundError, StoreError

if TYPE_CHECKING:
    from tracker_reencrypt.stores.cosmos import CosmosStore

STATE_CONTAINER_SUFFIX = "-reencrypt-state"

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
        item_id = record_item_id(record_id)
        item = {"id": item_id, "kind": kind, "recordId": record_id, "body": body}
        with self._translated(f"replacing {kind} {record_id!r}"):
            return self._container.replace_item(
                item_id, item, etag=etag, match_condition=MatchConditions.IfNotModified
            )["_etag"]

    def list(self, kind: str, prefix: str = "") -> list[tuple[str, dict, str]]:
        query = "SELECT * FROM c WHERE c.kind = @kind AND STARTSWITH(c.recordId, @prefix)"
        parameters: list[dict[str, object]] = [{"name": "@kind", "value": kind}, {"name": "@prefix", "value": prefix}]
        try:
            with self._translated(f"listing {kind} records"):
                items = list(self._container.query_items(query, parameters=parameters, partition_key=kind))
        except NotFoundError:  # no state container yet: no record was ever written
            return []
        return sorted(((item["recordId"], item["body"], item["_etag"]) for item in items), key=lambda row: row[0])


__all__ = ["STATE_CONTAINER_SUFFIX", "CosmosRecordStore", "record_item_id"]
