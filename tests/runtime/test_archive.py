"""Archives in transit: packed, moved through a real object store bucket, checked, and
unpacked only inside their target."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from ragbus.runtime import BadRequestError
from ragbus.runtime.archive import (
    drop_object,
    fetch_object,
    open_backup_bucket,
    pack,
    sha256_file,
    store_object,
    unpack,
)
from ragbus.runtime.connection import NATS
from ragbus.subjects import Subjects


def test_pack_and_unpack_keep_the_files_but_the_skipped(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "segments" / "a").mkdir(parents=True)
    (source / "segments" / "a" / "vectors.dat").write_bytes(b"\0" * 100_000 + b"x")
    (source / "config.json").write_text("{}")
    (source / ".lock").write_text("123")
    pack(source, tmp_path / "a.tar.gz", skip=(".lock",))
    assert (tmp_path / "a.tar.gz").stat().st_size < 10_000  # preallocated zeros shrink
    names = unpack(tmp_path / "a.tar.gz", tmp_path / "out")
    assert sorted(names) == ["config.json", "segments/a/vectors.dat"]
    assert (tmp_path / "out" / "segments" / "a" / "vectors.dat").read_bytes() == \
        b"\0" * 100_000 + b"x"
    assert not (tmp_path / "out" / ".lock").exists()


def test_unpack_refuses_a_member_outside_the_target(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tar:
        data = b"owned"
        member = tarfile.TarInfo("../escaped.txt")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    with pytest.raises(BadRequestError, match="not a readable archive"):
        unpack(tmp_path / "evil.tar.gz", tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def test_unpack_names_a_file_that_is_no_archive(tmp_path: Path) -> None:
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar at all")
    with pytest.raises(BadRequestError, match=r"junk\.tar\.gz is not a readable archive"):
        unpack(tmp_path / "junk.tar.gz", tmp_path / "out")


async def test_an_archive_goes_through_the_bucket_and_its_digest_is_checked(
    nc: NATS, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: several chunks
    (tmp_path / "in.bin").write_bytes(data)
    digest = sha256_file(tmp_path / "in.bin")
    assert digest == hashlib.sha256(data).hexdigest()
    obs = await open_backup_bucket(nc, Subjects())
    await open_backup_bucket(nc, Subjects())  # whoever comes second opens it
    await store_object(obs, "one", tmp_path / "in.bin")
    await fetch_object(obs, "one", tmp_path / "out.bin", sha256=digest)
    assert (tmp_path / "out.bin").read_bytes() == data
    with pytest.raises(BadRequestError, match="changed on the way"):
        await fetch_object(obs, "one", tmp_path / "other.bin", sha256="0" * 64)
    await drop_object(obs, "one")
    await drop_object(obs, "one")  # gone already is fine
    with pytest.raises(BadRequestError, match="no archive 'one'"):
        await fetch_object(obs, "one", tmp_path / "gone.bin", sha256=digest)
    with pytest.raises(BadRequestError, match="name and SHA-256"):
        await fetch_object(obs, "", tmp_path / "x.bin", sha256=digest)
