"""A local S3 (moto, tests/s3_server.py) in a subprocess on 127.0.0.1, for tests and benchmarks of s3:// stores.

One server and one bucket serve a whole test session; each test takes its own prefix. Its requests can be
counted (`requests`), and every object of the bucket read back (`objects`) to check what a purge left behind.
The credentials are moto's dummies; nothing reaches a network.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

SERVER_SCRIPT = Path(__file__).resolve().parent / "s3_server.py"
BUCKET = "memalign-tests"
START_DEADLINE_S = 60
_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_REGION": "us-east-1"}


@dataclass(frozen=True)
class ObjectStore:
    """A running local S3 server and its bucket."""

    endpoint: str
    bucket: str

    def env(self) -> dict[str, str]:
        """The standard AWS_* variables that point a process (LanceDB inside it) at this server."""
        return _KEYS | {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true"}

    def storage_options(self) -> dict[str, str]:
        """The same as LanceDB storage options (`[store.storage_options]`), for an in-process engine."""
        return {
            "aws_access_key_id": _KEYS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": _KEYS["AWS_SECRET_ACCESS_KEY"],
            "region": _KEYS["AWS_REGION"],
            "endpoint": self.endpoint,
            "allow_http": "true",
        }

    def new_prefix(self) -> str:
        """A data dir of its own in the bucket: s3://<bucket>/<random>."""
        return f"s3://{self.bucket}/{uuid.uuid4().hex[:12]}"

    def client(self) -> Any:
        """A boto3 S3 client for this server (imported here: only object-store tests pay for it)."""
        import boto3  # pyright: ignore[reportMissingTypeStubs]

        return boto3.client(  # pyright: ignore[reportUnknownMemberType]
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=_KEYS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=_KEYS["AWS_SECRET_ACCESS_KEY"],
            region_name=_KEYS["AWS_REGION"],
        )

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        """Every object of the bucket under `prefix` (a key prefix, no s3://), read whole through the S3 API."""
        client = self.client()
        out: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for entry in page.get("Contents", []):
                key = str(entry["Key"])
                out[key] = bytes(client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        return out

    def requests(self, *, reset: bool = False) -> dict[str, int]:
        """Requests served so far by HTTP method; with `reset`, count from zero afterwards."""
        url = f"{self.endpoint}/_requests"
        reply = httpx.delete(url) if reset else httpx.get(url)
        reply.raise_for_status()
        return {str(k): int(v) for k, v in json.loads(reply.text).items()}


@contextmanager  # pyright: ignore[reportDeprecated]
def running_object_store(log: Path) -> Iterator[ObjectStore]:
    """Start the server (its request log goes to `log`), make the bucket, stop the server on leaving."""
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert process.stdout is not None
        # The first line is the port; readline returns "" if the server dies first, so this cannot hang.
        line = process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the S3 server did not start: {line!r}; see {log}")
        store = ObjectStore(f"http://127.0.0.1:{int(line.split()[1])}", BUCKET)
        store.client().create_bucket(Bucket=BUCKET)
        yield store
    finally:
        process.terminate()
        try:
            process.wait(timeout=START_DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
