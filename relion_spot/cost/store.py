"""DynamoDB access for job-attempt records and job costs.

Records table: one item per job attempt, key ``job`` = "<cluster>#<job id>", ``attempt`` = the
attempt's start second (zero-padded, so attempts sort in time; Slurm gives no attempt counter
and a requeued attempt starts anew). Written once with a condition, so Slurm re-running the
writer, or a retried request, never doubles an attempt. The attempt itself is one JSON
attribute. Beside the attempts, hourly index items (``job`` = "hour#<cluster>#<YYYYMMDDHH>#<shard>",
``attempt`` = "index") hold the records of the attempts that ended in that hour as a string set:
adding an element twice changes nothing, and the scheduled pricing fetches a window's index
items by key instead of querying or scanning the table.

Costs table: one item per job, key ``job``; the estimate, a fingerprint of everything priced,
and the breakdown as JSON, with ``billed_by_day``/``billed_usd`` from Cost Explorer beside it.
GSI ``by-start`` (``cluster``, ``first_start``) serves the report. The pricing writes whole
items in batches and carries the billed fields over; pricing and reconciliation take turns on a
lease item in this table (relion_spot.cost.lock), so they never interleave.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from relion_spot.cost.pricing import Attempt, JobCost, NodeUse, StorageIo, Volume

log = logging.getLogger(__name__)

JOB_KEY = "job"
ATTEMPT_KEY = "attempt"
COSTS_BY_START = "by-start"
BILLED_FIELDS = ("billed_by_day", "billed_usd", "billed_at")
RECORD = "record"
BUCKET_PREFIX = "hour#"
BUCKET_SORT_KEY = "index"
BUCKET_RECORDS = "records"
BUCKET_OVERFLOW = "overflow"
BUCKET_SHARDS = 16
"""Each hour's records are spread over this many index items by job id, so a busy hour stays
far below DynamoDB's 400 KB item limit (overflow items catch the rest)."""
MAX_OVERFLOW = 32
WRITERS = 4
"""Concurrent batch requests: DynamoDB batches are latency-bound, so a few in flight overlap
the round trips (boto3 clients are thread-safe)."""
TOP_LEVEL_FIELDS = ("cluster", "first_start")

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class MalformedRecord(ValueError):
    """A stored attempt that cannot be read back as one (named by its key)."""


def job_key(cluster: str, job_id: str) -> str:
    return f"{cluster}#{job_id}"


def hour_of(epoch: int) -> int:
    return int(epoch) // 3600


def shard_of(job_id: str) -> int:
    return zlib.crc32(job_id.encode()) % BUCKET_SHARDS


def bucket_key(cluster: str, hour: int, shard: int) -> str:
    stamp = datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y%m%d%H")
    return f"{BUCKET_PREFIX}{cluster}#{stamp}#{shard:02d}"


def is_bucket_key(key: str) -> bool:
    return key.startswith(BUCKET_PREFIX)


def split_job_key(key: str) -> tuple[str, str]:
    cluster, sep, job_id = key.rpartition("#")
    if not sep or not cluster or not job_id:
        raise MalformedRecord(f"job key {key!r} is not '<cluster>#<job id>'")
    return cluster, job_id


def to_dynamo(value: Any) -> Any:
    """Plain Python -> DynamoDB-ready values (floats become exact Decimals of their repr)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_dynamo(v) for v in value]
    return value


def from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_dynamo(v) for v in value]
    return value


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(to_dynamo(v)) for k, v in item.items()}


def deserialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: from_dynamo(_deserializer.deserialize(v)) for k, v in item.items()}


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def attempt_item(attempt: Attempt, *, recorded_at: float) -> dict[str, Any]:
    """Keys and index attributes, plus the attempt itself as one JSON attribute: an attempt is
    read whole or not at all, and one attribute per item keeps reads of 100,000 records cheap
    (per-attribute cost dominates in the emulated DynamoDB; DynamoDB itself bills by size)."""
    record = {
        "cluster": attempt.cluster,
        "job_id": attempt.job_id,
        "start": attempt.start,
        "end": attempt.end,
        "state": attempt.state,
        "user": attempt.user,
        "job_name": attempt.job_name,
        "partition": attempt.partition,
        "cpus": attempt.cpus,
        "node_count": attempt.node_count,
        "reason": attempt.reason,
        "exit_code": attempt.exit_code,
        "recorded_at": int(recorded_at),
        "nodes": [
            {
                "node": n.node,
                "instance_id": n.instance_id,
                "instance_type": n.instance_type,
                "availability_zone": n.availability_zone,
                "launch_time": n.launch_time,
                "volumes": [{"size_gb": v.size_gb, "type": v.volume_type} for v in n.volumes],
            }
            for n in attempt.nodes
        ],
    }
    return {
        JOB_KEY: job_key(attempt.cluster, attempt.job_id),
        ATTEMPT_KEY: attempt.key,
        "cluster": attempt.cluster,
        "end": attempt.end,
        RECORD: _compact(record),
    }


def record_of(item: dict[str, Any]) -> dict[str, Any]:
    """The attempt fields of a stored record item."""
    raw = item.get(RECORD)
    if not isinstance(raw, str):
        raise MalformedRecord(f"record {item.get(JOB_KEY)!r}/{item.get(ATTEMPT_KEY)!r}: no JSON")
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as err:
        where = f"{item.get(JOB_KEY)!r}/{item.get(ATTEMPT_KEY)!r}"
        raise MalformedRecord(f"record {where}: not JSON ({err})") from None
    if not isinstance(record, dict):
        raise MalformedRecord(f"record {item.get(JOB_KEY)!r}: not a JSON object")
    return record


def cost_item(cost: JobCost, *, fingerprint: str, priced_at: float) -> dict[str, Any]:
    """Attributes the index, the metric and the idempotency check need; everything else (user,
    month, per-attempt breakdown) as one JSON attribute the report unpacks."""
    summary = cost.as_dict()
    top = {k: summary.pop(k) for k in TOP_LEVEL_FIELDS}
    summary["priced_at"] = int(priced_at)
    return {
        JOB_KEY: job_key(cost.cluster, cost.job_id),
        **top,
        "fingerprint": fingerprint,
        "detail": _compact(summary),
    }


def decode_cost(item: dict[str, Any]) -> dict[str, Any]:
    """A stored job cost with its breakdown unpacked (as ``JobCost.as_dict`` plus extras)."""
    decoded = dict(item)
    detail = decoded.pop("detail", None)
    if isinstance(detail, str):
        decoded.update(json.loads(detail))
    return decoded


def _text(item: dict[str, Any], name: str, *, required: bool = False) -> str:
    value = item.get(name)
    if value is None or value == "":
        if required:
            raise MalformedRecord(f"{name} missing")
        return ""
    if not isinstance(value, str | int):
        raise MalformedRecord(f"{name}={value!r} is not text")
    return str(value)


def _int(item: dict[str, Any], name: str, *, default: int | None = None) -> int:
    value = item.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedRecord(f"{name}={value!r} is not a number")
    return int(value)


def attempt_from_item(stored: dict[str, Any]) -> Attempt:
    """Read a deserialized record item back; anything unusable raises MalformedRecord."""
    item = {**record_of(stored), JOB_KEY: stored.get(JOB_KEY), ATTEMPT_KEY: stored.get(ATTEMPT_KEY)}
    try:
        nodes = []
        for raw in item.get("nodes") or []:
            if not isinstance(raw, dict):
                raise MalformedRecord(f"node entry {raw!r} is not a map")
            launch = raw.get("launch_time")
            nodes.append(
                NodeUse(
                    node=_text(raw, "node", required=True),
                    instance_id=_text(raw, "instance_id") or None,
                    instance_type=_text(raw, "instance_type") or None,
                    availability_zone=_text(raw, "availability_zone") or None,
                    launch_time=float(launch) if isinstance(launch, int | float) else None,
                    volumes=tuple(
                        Volume(size_gb=_int(v, "size_gb"), volume_type=_text(v, "type") or "gp3")
                        for v in raw.get("volumes") or []
                    ),
                )
            )
        attempt = Attempt(
            cluster=_text(item, "cluster", required=True),
            job_id=_text(item, "job_id", required=True),
            start=_int(item, "start"),
            end=_int(item, "end"),
            state=_text(item, "state", required=True),
            user=_text(item, "user"),
            job_name=_text(item, "job_name"),
            partition=_text(item, "partition"),
            cpus=_int(item, "cpus", default=0),
            node_count=_int(item, "node_count", default=0),
            nodes=tuple(nodes),
            reason=_text(item, "reason"),
            exit_code=_text(item, "exit_code"),
        )
    except (MalformedRecord, TypeError, AttributeError) as err:
        where = f"{item.get(JOB_KEY)!r}/{item.get(ATTEMPT_KEY)!r}"
        raise MalformedRecord(f"record {where}: {err}") from None
    if attempt.end < attempt.start:
        raise MalformedRecord(f"record {item.get(JOB_KEY)!r}: ends before it starts")
    return attempt


def _retrying(call, unprocessed_key: str, request: dict[str, Any], attempts: int = 8) -> list:
    """Run a batch call until DynamoDB has processed every part of it; returns the responses."""
    responses = []
    delay = 0.05
    for _ in range(attempts):
        response = call(request)
        responses.append(response)
        request = response.get(unprocessed_key) or {}
        if not request:
            return responses
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    raise RuntimeError(f"DynamoDB left {unprocessed_key} after {attempts} tries")


@dataclass
class AttemptStore:
    client: Any
    table: str

    def put(self, attempt: Attempt, *, recorded_at: float | None = None) -> bool:
        """Write an attempt once and list it in its hour's index. False when it was already
        there (a retried write); the index entry is then re-added from the stored record, which
        a string set absorbs, so neither a record nor an index entry is ever doubled."""
        when = time.time() if recorded_at is None else recorded_at
        item = attempt_item(attempt, recorded_at=when)
        try:
            self.client.put_item(
                TableName=self.table,
                Item=serialize(item),
                ConditionExpression="attribute_not_exists(#job)",
                ExpressionAttributeNames={"#job": JOB_KEY},
            )
            written = True
        except self.client.exceptions.ConditionalCheckFailedException:
            written = False
            stored = self.client.get_item(
                TableName=self.table,
                Key={JOB_KEY: {"S": item[JOB_KEY]}, ATTEMPT_KEY: {"S": item[ATTEMPT_KEY]}},
                ConsistentRead=True,
            )
            item = deserialize(stored["Item"])
        self._index(attempt, item[RECORD])
        return written

    def _index(self, attempt: Attempt, record: str) -> None:
        base = bucket_key(attempt.cluster, hour_of(attempt.end), shard_of(attempt.job_id))
        for overflow in range(MAX_OVERFLOW + 1):
            key = base if overflow == 0 else f"{base}#{overflow}"
            try:
                self.client.update_item(
                    TableName=self.table,
                    Key={JOB_KEY: {"S": key}, ATTEMPT_KEY: {"S": BUCKET_SORT_KEY}},
                    UpdateExpression="ADD #records :record",
                    ExpressionAttributeNames={"#records": BUCKET_RECORDS},
                    ExpressionAttributeValues={":record": {"SS": [record]}},
                )
            except self.client.exceptions.ClientError as err:
                if "size" not in str(err).lower() or overflow == MAX_OVERFLOW:
                    raise
                continue
            if overflow:
                self._note_overflow(base, overflow)
            return

    def _note_overflow(self, base: str, overflow: int) -> None:
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table,
                Key={JOB_KEY: {"S": base}, ATTEMPT_KEY: {"S": BUCKET_SORT_KEY}},
                UpdateExpression="SET #overflow = :n",
                ConditionExpression="attribute_not_exists(#overflow) OR #overflow < :n",
                ExpressionAttributeNames={"#overflow": BUCKET_OVERFLOW},
                ExpressionAttributeValues={":n": {"N": str(overflow)}},
            )

    def records_ending_between(
        self, cluster: str, lower: int, upper: int
    ) -> Iterator[dict[str, Any]]:
        """Every attempt record whose end falls in the hours [lower, upper] touch, read from the
        hourly index items by key (no query or scan over the table)."""
        hours = range(int(lower) // 3600, int(upper) // 3600 + 1)
        keys = [bucket_key(cluster, h, s) for h in hours for s in range(BUCKET_SHARDS)]
        overflowing: list[str] = []
        for bucket in self._get_buckets(keys):
            yield from self._records_in(bucket)
            extra = bucket.get(BUCKET_OVERFLOW) or 0
            overflowing.extend(f"{bucket[JOB_KEY]}#{n}" for n in range(1, int(extra) + 1))
        for bucket in self._get_buckets(overflowing):
            yield from self._records_in(bucket)

    @staticmethod
    def _records_in(bucket: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for record in sorted(bucket.get(BUCKET_RECORDS) or ()):
            yield {JOB_KEY: bucket[JOB_KEY], RECORD: record}

    def _get_buckets(self, keys: Sequence[str]) -> Iterator[dict[str, Any]]:
        for offset in range(0, len(keys), 100):
            request = {
                self.table: {
                    "Keys": [
                        {JOB_KEY: {"S": k}, ATTEMPT_KEY: {"S": BUCKET_SORT_KEY}}
                        for k in keys[offset : offset + 100]
                    ]
                }
            }
            for response in _retrying(
                lambda r: self.client.batch_get_item(RequestItems=r), "UnprocessedKeys", request
            ):
                for raw in response.get("Responses", {}).get(self.table, []):
                    yield deserialize(raw)

    def items_of_job(self, cluster: str, job_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        paginator = self.client.get_paginator("query")
        for page in paginator.paginate(
            TableName=self.table,
            KeyConditionExpression="#job = :job",
            ExpressionAttributeNames={"#job": JOB_KEY},
            ExpressionAttributeValues={":job": {"S": job_key(cluster, job_id)}},
            ConsistentRead=True,
        ):
            items.extend(deserialize(raw) for raw in page["Items"])
        return items


@dataclass
class CostStore:
    client: Any
    table: str

    def _batch_get(self, keys: Iterable[str], projection: Sequence[str]) -> list[dict[str, Any]]:
        unique = sorted(set(keys))
        names = {f"#a{i}": name for i, name in enumerate([JOB_KEY, *projection])}

        def fetch(chunk: list[str]) -> list[dict[str, Any]]:
            request = {
                self.table: {
                    "Keys": [{JOB_KEY: {"S": k}} for k in chunk],
                    "ProjectionExpression": ", ".join(names),
                    "ExpressionAttributeNames": names,
                }
            }
            return [
                deserialize(raw)
                for response in _retrying(
                    lambda r: self.client.batch_get_item(RequestItems=r), "UnprocessedKeys", request
                )
                for raw in response.get("Responses", {}).get(self.table, [])
            ]

        chunks = [unique[o : o + 100] for o in range(0, len(unique), 100)]
        with ThreadPoolExecutor(max_workers=WRITERS) as pool:
            return [item for items in pool.map(fetch, chunks) for item in items]

    def fingerprints(self, keys: Iterable[str]) -> dict[str, str]:
        """Fingerprint of each job already priced: the cheap read that decides what changed."""
        return {
            item[JOB_KEY]: item.get("fingerprint", "")
            for item in self._batch_get(keys, ["fingerprint"])
        }

    def previous(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored estimate and billed fields of these jobs, by job key."""
        return {
            item[JOB_KEY]: decode_cost(item)
            for item in self._batch_get(keys, ["fingerprint", "detail", *BILLED_FIELDS])
        }

    def storage_readings(self, keys: Iterable[str]) -> dict[tuple[str, str], StorageIo]:
        """(job id, attempt) -> the storage I/O already priced into these jobs' stored costs."""
        readings: dict[tuple[str, str], StorageIo] = {}
        for item in self._batch_get(keys, ["detail"]):
            _, job_id = split_job_key(item[JOB_KEY])
            for attempt in decode_cost(item).get("attempts") or []:
                read = attempt.get("storage_read_bytes")
                written = attempt.get("storage_write_bytes")
                if isinstance(read, int) and isinstance(written, int):
                    readings[(job_id, attempt["attempt"])] = StorageIo(read, written)
        return readings

    def write_estimates(
        self, costs: Sequence[JobCost], *, priced_at: float
    ) -> list[tuple[JobCost, dict[str, Any]]]:
        """Write the jobs whose fingerprint changed, keeping their billed fields; returns each
        written job with what was stored before (empty when it is new)."""
        keyed = [(job_key(c.cluster, c.job_id), c) for c in costs]
        stored = self.fingerprints(k for k, _ in keyed)
        changed = []
        for key, cost in keyed:
            fingerprint = cost.fingerprint()
            if stored.get(key) != fingerprint:
                changed.append((key, cost, fingerprint))
        before = self.previous(k for k, _, _ in changed if k in stored)

        def write(chunk: list[tuple[str, JobCost, str]]) -> None:
            requests = []
            for key, cost, fingerprint in chunk:
                item = cost_item(cost, fingerprint=fingerprint, priced_at=priced_at)
                earlier = before.get(key, {})
                item.update({f: earlier[f] for f in BILLED_FIELDS if f in earlier})
                requests.append({"PutRequest": {"Item": serialize(item)}})
            _retrying(
                lambda r: self.client.batch_write_item(RequestItems=r),
                "UnprocessedItems",
                {self.table: requests},
            )

        chunks = [changed[o : o + 25] for o in range(0, len(changed), 25)]
        with ThreadPoolExecutor(max_workers=WRITERS) as pool:
            list(pool.map(write, chunks))
        return [(cost, before.get(key, {})) for key, cost, _ in changed]

    def record_billed(
        self, cluster: str, job_id: str, by_day: dict[str, float], *, billed_at: float
    ) -> bool:
        """Merge Cost Explorer's daily amounts for a job; False when nothing changed."""
        key = job_key(cluster, job_id)
        response = self.client.get_item(
            TableName=self.table,
            Key={JOB_KEY: {"S": key}},
            ProjectionExpression="billed_by_day",
            ConsistentRead=True,
        )
        current = deserialize(response.get("Item", {})).get("billed_by_day") or {}
        merged = {**current, **by_day}
        if merged == current:
            return False
        total = round(sum(merged.values()), 10)
        self.client.update_item(
            TableName=self.table,
            Key={JOB_KEY: {"S": key}},
            UpdateExpression="SET billed_by_day = :days, billed_usd = :total, billed_at = :now,"
            " #cluster = if_not_exists(#cluster, :cluster),"
            " job_id = if_not_exists(job_id, :job_id)",
            ExpressionAttributeNames={"#cluster": "cluster"},
            ExpressionAttributeValues=serialize(
                {
                    ":days": merged,
                    ":total": total,
                    ":now": int(billed_at),
                    ":cluster": cluster,
                    ":job_id": job_id,
                }
            ),
        )
        return True

    def items_starting_between(
        self, cluster: str, lower: int, upper: int
    ) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("query")
        for page in paginator.paginate(
            TableName=self.table,
            IndexName=COSTS_BY_START,
            KeyConditionExpression="#cluster = :cluster AND first_start BETWEEN :lower AND :upper",
            ExpressionAttributeNames={"#cluster": "cluster"},
            ExpressionAttributeValues={
                ":cluster": {"S": cluster},
                ":lower": {"N": str(int(lower))},
                ":upper": {"N": str(int(upper))},
            },
        ):
            for raw in page["Items"]:
                yield decode_cost(deserialize(raw))

    def all_items(self) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("scan")
        for page in paginator.paginate(TableName=self.table):
            for raw in page["Items"]:
                yield decode_cost(deserialize(raw))


def create_tables(client: Any, *, records_table: str, costs_table: str) -> None:
    """Create both tables as the construct defines them (for the local emulation and tests)."""
    client.create_table(
        TableName=records_table,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": JOB_KEY, "AttributeType": "S"},
            {"AttributeName": ATTEMPT_KEY, "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": JOB_KEY, "KeyType": "HASH"},
            {"AttributeName": ATTEMPT_KEY, "KeyType": "RANGE"},
        ],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"},
    )
    client.create_table(
        TableName=costs_table,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": JOB_KEY, "AttributeType": "S"},
            {"AttributeName": "cluster", "AttributeType": "S"},
            {"AttributeName": "first_start", "AttributeType": "N"},
        ],
        KeySchema=[{"AttributeName": JOB_KEY, "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": COSTS_BY_START,
                "KeySchema": [
                    {"AttributeName": "cluster", "KeyType": "HASH"},
                    {"AttributeName": "first_start", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )
