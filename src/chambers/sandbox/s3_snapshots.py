"""`S3SnapshotStore`: workspace snapshots in S3-compatible object storage (AWS S3, MinIO, Ceph, R2, ...).

An image is three objects under `<prefix>/<image id>/`: the archive (`workspace.tar` or
`workspace.tar.zst`), `state.json`, and `manifest.json`, written last: an image exists once its
manifest does, so a save cut off half-way leaves nothing restorable (a failed save also removes what
it had uploaded). Restore downloads the archive to a file next to the workspace and unpacks it with
the same safe extraction and swap as the local store (`chambers.sandbox.snapshots.unpack`).

Credentials and region come from the usual AWS settings, read by boto3 itself (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE`, `AWS_DEFAULT_REGION`, the shared config
files, instance or pod roles); `AWS_REGION` is honoured too. `endpoint_url` points at another
S3-compatible service and switches to path-style addressing (`<endpoint>/<bucket>/<key>`), which
they all serve. Large archives go up and down in parts (boto3's transfer manager). boto3 blocks, so
every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from boto3.exceptions import Boto3Error, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from chambers.core.ids import new_id
from chambers.sandbox.archive import Codec
from chambers.sandbox.snapshots import (
    ARCHIVES,
    MANIFEST,
    MAX_MEMBERS,
    MAX_RESTORE_BYTES,
    STATE,
    CodecChoice,
    ImageNotFoundError,
    SnapshotError,
    encode_state,
    read_metadata,
    resolve_codec,
    scratch_dir,
    unpack,
    validate_image_id,
    write_archive,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

log = logging.getLogger("chambers.sandbox")

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_MiB = 1024 * 1024


class _Missing(Exception):
    """An object that is not there (internal: each caller says what that means)."""


def _is_missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code", "")) in _NOT_FOUND


@contextmanager
def _storage_errors(what: str) -> Iterator[None]:
    """boto3's errors as SnapshotError (a missing object as `_Missing`); messages carry no secret."""
    try:
        yield
    except S3UploadFailedError as error:  # the transfer manager wraps the ClientError of a failed part
        cause = error.__context__
        if isinstance(cause, ClientError):
            raise _refused(what, cause) from error
        raise SnapshotError(f"object storage could not {what}: {error}") from error
    except ClientError as error:
        if _is_missing(error):
            raise _Missing(what) from None
        raise _refused(what, error) from error
    except (BotoCoreError, Boto3Error) as error:
        raise SnapshotError(f"object storage could not {what}: {error}") from error


def _refused(what: str, error: ClientError) -> SnapshotError:
    details = error.response.get("Error", {})
    code = details.get("Code", "error")
    message = details.get("Message") or ""
    return SnapshotError(f"object storage refused to {what}: {code} {message}".strip())


class S3SnapshotStore:
    """Snapshots in a bucket, under an optional key prefix (shared by every replica)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        codec: CodecChoice = "none",
        max_restore_bytes: int = MAX_RESTORE_BYTES,
        max_members: int = MAX_MEMBERS,
        part_size: int = 64 * _MiB,
    ) -> None:
        if not bucket:
            raise ValueError("a bucket is required")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._codec: Codec = resolve_codec(codec)
        self._max_restore_bytes = max_restore_bytes
        self._max_members = max_members
        # Parts of 64 MiB: a 16 GiB workspace is 256 parts (S3 allows 10,000).
        self._transfer = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)
        config = Config(
            retries={"mode": "standard", "max_attempts": 5},
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        # A boto3 client is thread-safe once made (a Session is not: it stays in this thread).
        session = boto3.session.Session(region_name=os.environ.get("AWS_REGION") or None)
        self._client: S3Client = session.client("s3", endpoint_url=endpoint_url, config=config)

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"S3 {where} at {self.endpoint_url}" if self.endpoint_url else f"S3 {where}"

    def _key(self, image_id: str, name: str) -> str:
        key = f"{validate_image_id(image_id)}/{name}"
        return f"{self.prefix}/{key}" if self.prefix else key

    async def save(self, workspace: Path, state: Mapping[str, Any]) -> str:
        state_json = encode_state(state)
        return await asyncio.to_thread(self._save, Path(workspace), state_json)

    def _save(self, workspace: Path, state_json: str) -> str:
        workspace = workspace.absolute()
        if not workspace.is_dir():
            raise SnapshotError(f"workspace {workspace} is not a directory")
        image_id = new_id("im", "-")
        staging = scratch_dir(workspace, "snapshot")
        uploading = False
        try:
            archive, manifest = write_archive(workspace, staging, self._codec)
            uploading = True
            with _storage_errors("store a snapshot"):
                self._client.upload_file(
                    str(archive), self.bucket, self._key(image_id, archive.name), Config=self._transfer
                )
                self._put(image_id, STATE, state_json)
                self._publish(image_id, manifest)
        except BaseException:
            if uploading:
                self._remove(image_id, best_effort=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return image_id

    def _put(self, image_id: str, name: str, body: str) -> None:
        self._client.put_object(
            Bucket=self.bucket,
            Key=self._key(image_id, name),
            Body=body.encode("utf-8"),
            ContentType="application/json",
        )

    def _publish(self, image_id: str, manifest: str) -> None:
        """The last step of a save: with its manifest, the image exists."""
        self._put(image_id, MANIFEST, manifest)

    def _get(self, image_id: str, name: str) -> bytes:
        with _storage_errors("read a snapshot"):
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(image_id, name))["Body"]
            try:
                return body.read()
            finally:
                body.close()

    async def restore(self, image_id: str, workspace: Path) -> dict[str, Any]:
        validate_image_id(image_id)
        return await asyncio.to_thread(self._restore, image_id, Path(workspace))

    def _restore(self, image_id: str, workspace: Path) -> dict[str, Any]:
        workspace = workspace.absolute()
        try:
            manifest = self._get(image_id, MANIFEST)
            state_bytes = self._get(image_id, STATE)
        except _Missing:
            raise ImageNotFoundError(f"no image {image_id}") from None
        codec, state = read_metadata(image_id, manifest, state_bytes)
        download = scratch_dir(workspace, "download")
        try:
            archive = download / ARCHIVES[codec]
            try:
                with _storage_errors("download a snapshot"):
                    self._client.download_file(
                        self.bucket, self._key(image_id, archive.name), str(archive), Config=self._transfer
                    )
            except _Missing:
                raise SnapshotError(f"image {image_id} is damaged: its archive is missing") from None
            unpack(
                image_id,
                archive,
                codec,
                workspace,
                max_bytes=self._max_restore_bytes,
                max_members=self._max_members,
            )
        finally:
            shutil.rmtree(download, ignore_errors=True)
        return state

    async def delete(self, image_id: str) -> None:
        validate_image_id(image_id)
        await asyncio.to_thread(self._remove, image_id)

    def _remove(self, image_id: str, *, best_effort: bool = False) -> None:
        """The manifest first (the image stops existing), then every other object of the image."""
        try:
            with _storage_errors("delete a snapshot"):
                self._client.delete_object(Bucket=self.bucket, Key=self._key(image_id, MANIFEST))
                folder = self._key(image_id, "")
                pages = self._client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=folder
                )
                for page in pages:
                    keys: list[ObjectIdentifierTypeDef] = [
                        {"Key": item["Key"]} for item in page.get("Contents", []) if "Key" in item
                    ]
                    if not keys:
                        continue
                    answer = self._client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                    )
                    if answer.get("Errors"):
                        first = answer["Errors"][0]
                        raise SnapshotError(
                            f"object storage kept {len(answer['Errors'])} object(s) of image {image_id}: "
                            f"{first.get('Code', 'error')} {first.get('Message', '')}".strip()
                        )
        except _Missing:
            return  # the bucket listing found nothing: already gone
        except SnapshotError as error:
            if not best_effort:
                raise
            log.warning("could not remove the incomplete snapshot %s: %s", image_id, error)

    async def exists(self, image_id: str) -> bool:
        validate_image_id(image_id)
        return await asyncio.to_thread(self._exists, image_id)

    def _exists(self, image_id: str) -> bool:
        try:
            with _storage_errors("look up a snapshot"):
                self._client.head_object(Bucket=self.bucket, Key=self._key(image_id, MANIFEST))
        except _Missing:
            return False
        return True
