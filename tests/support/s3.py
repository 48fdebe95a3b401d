"""A real S3 HTTP server (moto's) on a free loopback port, for the object-storage snapshot tests.

It is an HTTP server speaking the S3 API, run in a thread of the test process: the code under test
talks to it over the network with boto3, exactly as to MinIO or AWS (nothing of ours is mocked).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import boto3
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# The usual AWS settings, with dummy credentials, and nothing read from the developer's ~/.aws.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "chambers-test-key",
    "AWS_SECRET_ACCESS_KEY": "chambers-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/chambers-test/config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/chambers-test/credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class S3Server:
    """Buckets on a moto server; `endpoint_url` is what CHAMBERS_SNAPSHOT_ENDPOINT_URL gets."""

    def __init__(self, server: ThreadedMotoServer) -> None:
        host, port = server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        self.client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def new_bucket(self) -> str:
        name = f"chambers-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> set[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return {item["Key"] for page in pages for item in page.get("Contents", []) if "Key" in item}


@contextmanager
def running_s3() -> Iterator[S3Server]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield S3Server(server)
    finally:
        server.stop()
