"""The SnapshotStore suite on both stores (a directory; S3 on a real S3 HTTP server), their own
rules, and the settings that choose between them."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from chambers.config import S3Location, SettingsError, load_settings, parse_snapshot_url
from chambers.core.ids import new_id
from chambers.sandbox import LocalSnapshotStore, SnapshotError, SnapshotStore
from chambers.sandbox.s3_snapshots import S3SnapshotStore
from chambers.sandbox.snapshot_conformance import Plant, SnapshotStoreSuite, Stored, StoreFactory
from chambers.sandbox.snapshots import CodecChoice
from chambers.wiring import build_snapshots
from tests.support.s3 import AWS_ENV, S3Server, running_s3

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with running_s3() as server:
        yield server


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual AWS settings, as an operator gives them (dummy credentials for the test server)."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)


class TestLocalSnapshotStore(SnapshotStoreSuite):
    @pytest.fixture
    def root(self, tmp_path: Path) -> Path:
        return tmp_path / "images"

    @pytest.fixture
    def make_store(self, root: Path) -> StoreFactory:
        def make(codec: CodecChoice = "none") -> SnapshotStore:
            return LocalSnapshotStore(root, codec=codec)

        return make

    @pytest.fixture
    def plant(self, root: Path) -> Plant:
        async def plant(image_id: str, objects: Mapping[str, bytes]) -> None:
            (root / image_id).mkdir(parents=True)
            for name, data in objects.items():
                (root / image_id / name).write_bytes(data)

        return plant

    @pytest.fixture
    def stored(self, root: Path) -> Stored:
        async def stored() -> set[str]:
            return {str(path.relative_to(root)) for path in root.rglob("*")} if root.exists() else set()

        return stored


class TestS3SnapshotStore(SnapshotStoreSuite):
    prefix = "snapshots/test"

    @pytest.fixture
    def bucket(self, s3: S3Server) -> str:
        return s3.new_bucket()

    @pytest.fixture
    def make_store(self, s3: S3Server, bucket: str, aws_env: None) -> StoreFactory:
        def make(codec: CodecChoice = "none") -> SnapshotStore:
            return S3SnapshotStore(bucket, self.prefix, endpoint_url=s3.endpoint_url, codec=codec)

        return make

    @pytest.fixture
    def plant(self, s3: S3Server, bucket: str) -> Plant:
        async def plant(image_id: str, objects: Mapping[str, bytes]) -> None:
            for name, data in objects.items():
                s3.client.put_object(Bucket=bucket, Key=f"{self.prefix}/{image_id}/{name}", Body=data)

        return plant

    @pytest.fixture
    def stored(self, s3: S3Server, bucket: str) -> Stored:
        async def stored() -> set[str]:
            return s3.keys(bucket)  # the whole bucket: nothing may land outside the prefix either

        return stored


# S3: its own rules


def _record_requests(store: S3SnapshotStore) -> list[tuple[str, str]]:
    """(operation, key) of every request the store's client sends, in order (boto3's event hooks)."""
    seen: list[tuple[str, str]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        seen.append((model.name, str(params.get("Key", ""))))

    store._client.meta.events.register("provide-client-params.s3.*", record)
    return seen


async def test_s3_objects_are_laid_out_under_the_prefix_with_the_manifest_last(
    s3: S3Server, aws_env: None, tmp_path: Path
) -> None:
    bucket = s3.new_bucket()
    store = S3SnapshotStore(bucket, "/team-a/snapshots/", endpoint_url=s3.endpoint_url)
    assert store.describe() == f"S3 s3://{bucket}/team-a/snapshots at {s3.endpoint_url}"
    requests = _record_requests(store)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "f.txt").write_text("x")
    image_id = await store.save(tmp_path / "ws", {"a": 1})
    folder = f"team-a/snapshots/{image_id}"
    assert s3.keys(bucket) == {f"{folder}/workspace.tar", f"{folder}/state.json", f"{folder}/manifest.json"}
    writes = [key for operation, key in requests if operation in ("PutObject", "CompleteMultipartUpload")]
    assert writes[-1] == f"{folder}/manifest.json" and len(writes) == 3
    # exists asks for the manifest only
    requests.clear()
    assert await store.exists(image_id)
    assert requests == [("HeadObject", f"{folder}/manifest.json")]


async def test_s3_without_a_prefix_keeps_images_at_the_bucket_root(
    s3: S3Server, aws_env: None, tmp_path: Path
) -> None:
    bucket = s3.new_bucket()
    store = S3SnapshotStore(bucket, endpoint_url=s3.endpoint_url)
    (tmp_path / "ws").mkdir()
    image_id = await store.save(tmp_path / "ws", {})
    names = ("workspace.tar", "state.json", "manifest.json")
    assert s3.keys(bucket) == {f"{image_id}/{name}" for name in names}
    await store.delete(image_id)
    assert s3.keys(bucket) == set()


async def test_s3_large_archives_go_up_and_down_in_parts(s3: S3Server, aws_env: None, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    store = S3SnapshotStore(bucket, "p", endpoint_url=s3.endpoint_url, part_size=5 * MiB)
    requests = _record_requests(store)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    blob = os.urandom(12 * MiB)
    (workspace / "big.bin").write_bytes(blob)
    image_id = await store.save(workspace, {})
    operations = [operation for operation, _ in requests]
    assert operations.count("UploadPart") == 3 and "CompleteMultipartUpload" in operations
    requests.clear()
    assert await store.restore(image_id, tmp_path / "restored") == {}
    assert (tmp_path / "restored" / "big.bin").read_bytes() == blob
    assert [operation for operation, _ in requests].count("GetObject") >= 3 + 2  # ranged parts + json


async def test_s3_a_missing_bucket_is_a_clear_snapshot_error(
    s3: S3Server, aws_env: None, tmp_path: Path
) -> None:
    store = S3SnapshotStore("no-such-bucket-here", endpoint_url=s3.endpoint_url)
    (tmp_path / "ws").mkdir()
    with pytest.raises(SnapshotError, match="NoSuchBucket"):
        await store.save(tmp_path / "ws", {})
    with pytest.raises(SnapshotError, match="NoSuchBucket"):
        await store.restore(new_id("im", "-"), tmp_path / "ws")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ws"]


async def test_s3_aws_region_is_honoured(
    s3: S3Server, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    store = S3SnapshotStore("bucket", endpoint_url=s3.endpoint_url)
    assert store._client.meta.region_name == "eu-west-3"
    assert getattr(store._client.meta.config, "s3", None) == {"addressing_style": "path"}


# settings


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://my-bucket", S3Location("my-bucket", "")),
        ("s3://my-bucket/", S3Location("my-bucket", "")),
        ("s3://my.bucket/team/snapshots/", S3Location("my.bucket", "team/snapshots")),
        ("S3://my-bucket/p", S3Location("my-bucket", "p")),
        ("file:///var/lib/chambers/snapshots", Path("/var/lib/chambers/snapshots")),
        ("file://localhost/srv/snap%20shots", Path("/srv/snap shots")),
        ("/mnt/shared/snapshots", Path("/mnt/shared/snapshots")),
        ("relative/snapshots", Path("relative/snapshots")),
    ],
)
def test_snapshot_urls_are_parsed(url: str, expected: object) -> None:
    assert parse_snapshot_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("s3://ab/p", "not a bucket name"),
        ("s3://bad_bucket!/p", "not a bucket name"),
        ("s3://key:secret@bucket/p", "must not hold credentials"),
        ("s3://bucket/a//b", "segment"),
        ("s3://bucket/a/../b", "segment"),
        ("s3://bucket/p?versionId=1", "query"),
        ("gs://bucket/p", "unknown scheme gs://"),
        ("http://minio:9000/bucket", "unknown scheme http://"),
        ("file://host/path", "file:///absolute/path"),
    ],
)
def test_bad_snapshot_urls_stop_the_server_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(snapshot_url=url)
    assert "CHAMBERS_SNAPSHOT_URL" in str(raised.value) and message in str(raised.value)


def test_snapshot_settings_that_contradict_each_other_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="snapshot_url or snapshot_dir"):
        load_settings(snapshot_url="s3://bucket", snapshot_dir=tmp_path)
    with pytest.raises(SettingsError, match="needs an s3:// snapshot_url"):
        load_settings(snapshot_endpoint_url="http://127.0.0.1:9000")
    for endpoint in ("minio:9000", "ftp://minio", "http://key:secret@minio:9000"):
        with pytest.raises(SettingsError, match="CHAMBERS_SNAPSHOT_ENDPOINT_URL"):
            load_settings(snapshot_url="s3://bucket", snapshot_endpoint_url=endpoint)


def test_the_settings_choose_the_store(s3: S3Server, aws_env: None, tmp_path: Path) -> None:
    default = build_snapshots(load_settings(data_dir=tmp_path))
    assert isinstance(default, LocalSnapshotStore) and default.root == tmp_path / "snapshots"
    local = build_snapshots(load_settings(data_dir=tmp_path, snapshot_url=f"file://{tmp_path}/shared"))
    assert isinstance(local, LocalSnapshotStore) and local.root == tmp_path / "shared"
    settings = load_settings(snapshot_url="s3://bucket/pre/fix", snapshot_endpoint_url=s3.endpoint_url + "/")
    remote = build_snapshots(settings)
    assert isinstance(remote, S3SnapshotStore)
    assert (remote.bucket, remote.prefix, remote.endpoint_url) == ("bucket", "pre/fix", s3.endpoint_url)
    assert AWS_ENV["AWS_SECRET_ACCESS_KEY"] not in remote.describe()
