"""Task outputs the gateway owns: the object stores that keep the copies, and the signed links that serve them.

The dispatcher copies an image or video into the store before the task is completed; the task service signs
links to it (`GET /api/v1/ai/task/{task_id}/output?expires=…&signature=…`) and serves them; deletes and the
retention sweep remove copies. An object's key is its task id: one output per task, found without a query.

Both stores are synchronous (pymongo's GridFS, boto3): the task service calls them in a worker thread, one
chunk at a time, so no object is ever held whole in memory.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import itertools
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlencode

from botocore.exceptions import BotoCoreError, ClientError
from bson import Binary
from gridfs.errors import NoFile
from pymongo import MongoClient
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from aitask.v1 import task_service_pb2
from aitask_common.mongo import DUPLICATE_KEY
from aitask_common.output_settings import OutputSettings, OutputStoreKind
from aitask_common.settings import Environment
from aitask_common.sharding import routed_by
from aitask_common.tasks import OutputDocument, utcnow

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# GridFS bucket (collections outputs.files and outputs.chunks) in the tasks' database.
GRIDFS_BUCKET: Final = "outputs"
# GridFS chunk size and the piece a read hands on: a seek lands within one chunk.
CHUNK_BYTES: Final = 255 * 1024
# Chunks one insert carries (2 MiB): what a copy holds in memory at most, beside one piece of the download.
WRITE_BATCH_CHUNKS: Final = 8
# Development only (production requires OUTPUT_URL_SECRET): a fixed key, so links survive restarts.
DEVELOPMENT_SECRET: Final = hashlib.sha256(b"aitask development output-link key").hexdigest()
OUTPUT_PATH: Final = "/api/v1/ai/task/{task_id}/output"


# What a store raises when it cannot be reached or refuses a call (retryable for the caller).
STORE_ERRORS: Final = (PyMongoError, BotoCoreError, ClientError)


class OutputTooLarge(ValueError):
    """The output is larger than OUTPUT_MAX_BYTES: nothing was stored."""


@dataclass(frozen=True)
class StoredOutput:
    """What the task document keeps about its stored copy (`output`)."""

    size: int
    content_type: str
    sha256: str
    stored: datetime

    def to_document(self) -> OutputDocument:
        """The `output` field of the task document."""
        return {"size": self.size, "content_type": self.content_type, "sha256": self.sha256, "stored": self.stored}


class OutputStore(Protocol):
    """Where copies live, keyed by task id."""

    def put(self, task_id: str, chunks: Iterable[bytes], content_type: str, max_bytes: int) -> StoredOutput:
        """Store the output (replacing a partial copy a killed run left); OutputTooLarge past `max_bytes`."""
        ...

    def read(self, task_id: str, start: int, end: int) -> Generator[bytes]:
        """Bytes start..end (inclusive), a chunk at a time."""
        ...

    def delete(self, task_id: str) -> None:
        """Remove the copy, if any (a partial one too)."""
        ...

    def task_ids(self) -> Iterator[str]:
        """Every stored copy's task id, partial ones included, read in pages."""
        ...


class _Counted:
    """Size and SHA-256 of the chunks passing through, refusing more than `max_bytes`."""

    def __init__(self, chunks: Iterable[bytes], max_bytes: int) -> None:
        self.chunks = chunks
        self.max_bytes = max_bytes
        self.size = 0
        self.digest = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise OutputTooLarge(f"the output is larger than OUTPUT_MAX_BYTES ({self.max_bytes} bytes)")
            self.digest.update(chunk)
            yield chunk

    def stored(self, content_type: str) -> StoredOutput:
        return StoredOutput(self.size, content_type, self.digest.hexdigest(), utcnow())


class GridFSOutputStore:
    """GridFS in the tasks' database: file `_id` = task id, so a read needs no query but chunk ones.

    Reads, writes and deletes are made here in GridFS's own format, which any GridFS client reads. Every query is
    by `_id`: FerretDB answers one by files_id (a GridOut's range read, GridFSBucket's delete) by reading the whole
    chunks collection. Writes are few, since each costs FerretDB and PostgreSQL more CPU than the bytes do: an
    output of up to WRITE_BATCH_CHUNKS chunks (every image) is one file document and one insert of its chunks; a
    longer one is streamed, marked in `uploads` until its file document, written last, exists. Only a task's
    recorded output is ever read, so neither order shows a partial copy; a killed run's is found by its file
    document or its mark. pymongo's GridIn would buffer up to 48 MB of chunks per upload (measured: 80 MiB of peak
    memory to store 40 MiB).
    """

    def __init__(self, client: MongoClient[dict[str, Any]], database: str) -> None:
        self.database = client[database]
        self.files = self.database[f"{GRIDFS_BUCKET}.files"]
        self.chunks = self.database[f"{GRIDFS_BUCKET}.chunks"]
        # A streamed copy in progress, from before its first chunk until its file document exists: the storage
        # check finds the chunks a killed run left by it, without reading the chunks collection.
        self.uploads = self.database[f"{GRIDFS_BUCKET}.uploads"]
        self._indexed = False

    def put(self, task_id: str, chunks: Iterable[bytes], content_type: str, max_bytes: int) -> StoredOutput:
        """See OutputStore.put: at most WRITE_BATCH_CHUNKS + 1 chunks in memory at a time."""
        if not self._indexed:
            # GridFS's own indexes (what GridIn makes), for other GridFS clients.
            self.chunks.create_index([("files_id", 1), ("n", 1)], unique=True)
            self.files.create_index([("filename", 1), ("uploadDate", 1)])
            self._indexed = True
        counted = _Counted(chunks, max_bytes)
        pieces = enumerate(_exact_pieces(counted, CHUNK_BYTES))
        first = [_chunk(task_id, number, data) for number, data in itertools.islice(pieces, WRITE_BATCH_CHUNKS + 1)]
        if len(first) > WRITE_BATCH_CHUNKS:
            return self._stream(task_id, first, pieces, counted, content_type)
        stored = counted.stored(content_type)  # the whole output is in hand
        try:
            self._insert_whole(task_id, stored, first)
        except DuplicateKeyError:  # an earlier run's copy, whole or partial
            self.delete(task_id)
            self._insert_whole(task_id, stored, first)
        return stored

    def _insert_whole(self, task_id: str, stored: StoredOutput, chunks: list[dict[str, Any]]) -> None:
        self.files.insert_one(_file_document(task_id, stored))
        try:
            if chunks:
                self.chunks.insert_many(chunks, ordered=True)
        except BaseException as error:
            if isinstance(error, BulkWriteError) and error.details["writeErrors"][0]["code"] == DUPLICATE_KEY:
                raise DuplicateKeyError(str(error), DUPLICATE_KEY) from error  # a killed run's first chunks
            with contextlib.suppress(PyMongoError):  # no half copy left behind, if the store lets us
                self.delete(task_id)
            raise

    def _stream(
        self,
        task_id: str,
        first: list[dict[str, Any]],
        pieces: Iterator[tuple[int, bytes]],
        counted: _Counted,
        content_type: str,
    ) -> StoredOutput:
        if self.files.find_one({"_id": task_id}, {"_id": 1}) is not None:
            self.delete(task_id)  # a whole copy an earlier run made, and died before its task recorded it
        try:
            self.uploads.insert_one({"_id": task_id, "started": utcnow()})
        except DuplicateKeyError:  # a copy a killed run began
            self.delete(task_id)
            self.uploads.insert_one({"_id": task_id, "started": utcnow()})
        try:
            batch = first
            for number, data in pieces:
                if len(batch) >= WRITE_BATCH_CHUNKS:
                    self.chunks.insert_many(batch, ordered=True)
                    batch = []
                batch.append(_chunk(task_id, number, data))
            self.chunks.insert_many(batch, ordered=True)
        except BaseException:
            with contextlib.suppress(PyMongoError):
                self._delete_chunks(task_id)
            raise
        stored = counted.stored(content_type)
        self.files.insert_one(_file_document(task_id, stored))
        self.uploads.delete_one({"_id": task_id})
        return stored

    def read(self, task_id: str, start: int, end: int) -> Generator[bytes]:
        """See OutputStore.read: one query per chunk, by its `_id`. FerretDB answers a GridOut's range query
        (`n >= k` sorted by n) by reading every remaining chunk of the file first, and even one by files_id and n
        reads the whole collection; an `_id` equality is one primary-key lookup. Chunks stored before chunk ids
        (ObjectIds) are found by files_id and n."""
        if not self.files.find({"_id": task_id}, {"_id": 1}).to_list():
            raise NoFile(f"no stored output for task {task_id}")
        first, last = start // CHUNK_BYTES, end // CHUNK_BYTES
        for number in range(first, last + 1):
            found = self.chunks.find(_chunk_filter(task_id, number), {"data": 1}).to_list()
            if not found:
                found = self.chunks.find({"files_id": task_id, "n": number}, {"data": 1}).to_list()
            if not found:
                raise NoFile(f"chunk {number} of task {task_id}'s output is missing")
            chunk = found[0]
            data = bytes(chunk["data"])
            offset = number * CHUNK_BYTES
            yield data[max(start - offset, 0) : end - offset + 1]

    def delete(self, task_id: str) -> None:
        """See OutputStore.delete: the file document first (a read then finds no copy, not a partial one), its
        chunks, then the upload marker (a delete cut short is still found by the storage check)."""
        file = self.files.find_one_and_delete({"_id": task_id})  # FerretDB refuses a projection here
        if not self._delete_chunks(task_id) and file is not None and file["length"]:
            self.chunks.delete_many({"files_id": task_id})  # chunks stored before chunk ids (ObjectIds)
        self.uploads.delete_one({"_id": task_id})

    def _delete_chunks(self, task_id: str) -> int:
        """Delete the task's chunks by id, in order until one is missing (a killed run stored a first few);
        how many."""
        deleted = 0
        while self.chunks.delete_one(_chunk_filter(task_id, deleted)).deleted_count:
            deleted += 1
        return deleted

    def task_ids(self) -> Iterator[str]:
        """See OutputStore.task_ids: finished copies, then copies begun and never finished (a killed run's)."""
        seen: set[str] = set()
        for document in self.files.find({}, {"_id": 1}):
            seen.add(document["_id"])
            yield document["_id"]
        for document in self.uploads.find({}, {"_id": 1}):
            if document["_id"] not in seen:
                yield document["_id"]


def _file_document(task_id: str, stored: StoredOutput) -> dict[str, Any]:
    """GridFS's file document of a copy."""
    return {
        "_id": task_id,
        "length": stored.size,
        "chunkSize": CHUNK_BYTES,
        "uploadDate": stored.stored,
        "filename": task_id,
        "metadata": {"content_type": stored.content_type, "sha256": stored.sha256},
    }


def _chunk(task_id: str, number: int, data: bytes) -> dict[str, Any]:
    """GridFS's chunk document, with an `_id` of its own (chunk_id)."""
    return {"_id": chunk_id(task_id, number), "files_id": task_id, "n": number, "data": Binary(data)}


def _chunk_filter(task_id: str, number: int) -> dict[str, Any]:
    """One chunk's filter: its `_id`, and its file's (the shard key of chunks on a sharded MongoDB)."""
    return {"_id": chunk_id(task_id, number)} | routed_by("files_id", task_id)


def chunk_id(task_id: str, number: int) -> str:
    """A chunk's `_id`: GridFS clients read chunks by files_id and n whatever their id, and a read by `_id` is the
    one lookup FerretDB answers from an index."""
    return f"{task_id}/{number}"


def _exact_pieces(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The bytes of `chunks` cut into pieces of exactly `size` (the last one shorter)."""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of chunks, for boto3's multipart upload."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = iter(chunks)
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            self.pending = next(self.chunks, b"")
            if not self.pending:
                return 0
        size = min(len(buffer), len(self.pending))
        buffer[:size] = self.pending[:size]
        self.pending = self.pending[size:]
        return size


class S3OutputStore:
    """Any S3-compatible store: object key = task id, in one bucket."""

    def __init__(self, settings: OutputSettings) -> None:
        import boto3  # only when configured: the GridFS default needs no S3 client
        from botocore.config import Config

        self.bucket = settings.s3_bucket
        self.client: S3Client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url or None,
            aws_access_key_id=settings.s3_access_key or None,
            aws_secret_access_key=settings.s3_secret_key or None,
            region_name=settings.s3_region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def ensure_bucket(self) -> None:
        """Create the bucket when it is missing."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put(self, task_id: str, chunks: Iterable[bytes], content_type: str, max_bytes: int) -> StoredOutput:
        """See OutputStore.put (a multipart upload of 8 MiB parts: memory stays bounded)."""
        counted = _Counted(chunks, max_bytes)
        try:
            self.client.upload_fileobj(
                io.BufferedReader(_ChunkReader(counted)), self.bucket, task_id, ExtraArgs={"ContentType": content_type}
            )
        except OutputTooLarge:
            self.delete(task_id)
            raise
        return counted.stored(content_type)

    def read(self, task_id: str, start: int, end: int) -> Generator[bytes]:
        """See OutputStore.read."""
        body = self.client.get_object(Bucket=self.bucket, Key=task_id, Range=f"bytes={start}-{end}")["Body"]
        try:
            yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()

    def delete(self, task_id: str) -> None:
        """See OutputStore.delete."""
        self.client.delete_object(Bucket=self.bucket, Key=task_id)

    def task_ids(self) -> Iterator[str]:
        """See OutputStore.task_ids."""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for item in page.get("Contents", []):
                yield item["Key"]


class NoOutputStore:
    """OUTPUT_STORE=none: nothing is copied, so there is nothing to read, delete or list."""

    def put(self, task_id: str, chunks: Iterable[bytes], content_type: str, max_bytes: int) -> StoredOutput:
        raise RuntimeError("OUTPUT_STORE=none keeps no copies: the dispatcher does not copy outputs")

    def read(self, task_id: str, start: int, end: int) -> Generator[bytes]:
        # A task copied before the store was turned off: its link answers 404, as for any missing copy.
        raise NoFile(f"no stored output for task {task_id}: OUTPUT_STORE=none")
        yield b""  # a generator, as the protocol says

    def delete(self, task_id: str) -> None:
        return None

    def task_ids(self) -> Iterator[str]:
        return iter(())


def open_output_store(settings: OutputSettings, mongo: MongoClient[dict[str, Any]]) -> OutputStore:
    """The store OUTPUT_STORE names (an S3 bucket is created when missing)."""
    if settings.output_store is OutputStoreKind.NONE:
        return NoOutputStore()
    if settings.output_store is OutputStoreKind.S3:
        store = S3OutputStore(settings)
        store.ensure_bucket()
        return store
    return GridFSOutputStore(mongo, settings.mongo_database)


def sniff_content_type(data: bytes) -> str:
    """The media type of base64-returned image bytes, from their magic numbers."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":
        return "video/mp4"
    return "application/octet-stream"


def decode_base64(payload: str) -> bytes:
    """The bytes of a vendor's base64 output."""
    return base64.b64decode(payload, validate=False)


class OutputLinks:
    """Signs and checks output links: HMAC-SHA256 over the task id and the expiry time."""

    def __init__(self, settings: OutputSettings) -> None:
        secret = settings.output_url_secret
        if not secret:
            if settings.environment is Environment.PRODUCTION:
                raise SystemExit("OUTPUT_URL_SECRET is required when ENVIRONMENT=production")
            secret = DEVELOPMENT_SECRET
        self.key = secret.encode()
        self.ttl_seconds = settings.output_url_ttl_seconds
        self.public_url = settings.output_public_url.rstrip("/")

    def signature(self, task_id: str, expires: int) -> str:
        """The signature of a link to `task_id` valid until `expires` (Unix seconds)."""
        return hmac.new(self.key, f"{task_id}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, task_id: str, now: float | None = None) -> str:
        """A fresh link to the task's output."""
        expires = int(now if now is not None else time.time()) + self.ttl_seconds
        query = urlencode({"expires": expires, "signature": self.signature(task_id, expires)})
        return f"{self.public_url}{OUTPUT_PATH.format(task_id=task_id)}?{query}"

    def valid(self, task_id: str, expires: str, signature: str, now: float | None = None) -> bool:
        """Whether a link's query is this server's and has not expired (compared in constant time)."""
        if not expires.isdigit() or int(expires) < (now if now is not None else time.time()):
            return False
        return hmac.compare_digest(self.signature(task_id, int(expires)), signature)

    def sign(self, task: task_service_pb2.Task) -> task_service_pb2.Task:
        """Point the task's image_url or video_url at its stored copy (in place), when it has one."""
        if task.HasField("output"):
            if task.type == "video":
                task.video_url = self.url(task.task_id)
            else:
                task.image_url = self.url(task.task_id)
        return task
