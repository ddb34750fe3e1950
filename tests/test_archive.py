"""Safe archive extraction, MD5 checks and downloads (data/archive.py)."""

import hashlib
import io
import os
import tarfile
import zipfile

import pytest

from imood_cli.data.archive import check_md5, download, md5_file, safe_extract
from imood_cli.errors import ImoodError


def add_file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def make_tar(path, members, mode="w:gz"):
    with tarfile.open(path, mode) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                add_file(tf, *m)
    return path


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_extracts_a_plain_tar_gz(tmp_path):
    arc = make_tar(tmp_path / "a.tar.gz", [("cifar-10-batches-py/data_batch_1", b"abc"),
                                           ("cifar-10-batches-py/readme.html", b"<p>")])
    out = tmp_path / "out"
    written = safe_extract(arc, out)
    assert (out / "cifar-10-batches-py" / "data_batch_1").read_bytes() == b"abc"
    assert sorted(p.name for p in written) == ["data_batch_1", "readme.html"]
    assert files_under(out) == ["cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/readme.html"]


@pytest.mark.parametrize("name", ["../evil.txt", "ok/../../evil.txt", "/tmp/imood-evil-abs.txt"])
def test_refuses_members_that_escape(tmp_path, name):
    arc = make_tar(tmp_path / "bad.tar", [("good.txt", b"fine"), (name, b"pwned")], mode="w")
    out = tmp_path / "sub" / "out"
    with pytest.raises(ImoodError, match="refusing member"):
        safe_extract(arc, out)
    # Nothing was written: not the good member, not the escaping one.
    assert files_under(tmp_path / "sub") == []
    assert not (tmp_path / "sub" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not os.path.exists("/tmp/imood-evil-abs.txt")


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_refuses_links(tmp_path, kind):
    link = tarfile.TarInfo("data/link")
    link.type = kind
    link.linkname = "/etc/passwd"
    arc = make_tar(tmp_path / "links.tar.gz", [link, ("data/x", b"1")])
    with pytest.raises(ImoodError, match="links are not extracted"):
        safe_extract(arc, tmp_path / "out")
    assert not (tmp_path / "out" / "data").exists()


def test_refuses_device_files(tmp_path):
    fifo = tarfile.TarInfo("fifo")
    fifo.type = tarfile.FIFOTYPE
    arc = make_tar(tmp_path / "fifo.tar", [fifo], mode="w")
    with pytest.raises(ImoodError, match="not a regular file"):
        safe_extract(arc, tmp_path / "out")


def test_refuses_writing_through_an_existing_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)
    arc = make_tar(tmp_path / "a.tar", [("link/x.txt", b"pwned")], mode="w")
    with pytest.raises(ImoodError, match="outside"):
        safe_extract(arc, out)
    assert list(outside.iterdir()) == []


def test_zip_extraction_and_refusals(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("SCOOD/data/imglist/a.txt", "x {}")
    safe_extract(good, tmp_path / "g")
    assert (tmp_path / "g" / "SCOOD" / "data" / "imglist" / "a.txt").read_text() == "x {}"

    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("fine.txt", "1")
        zf.writestr("../escape.txt", "2")
    with pytest.raises(ImoodError, match="'..'"):
        safe_extract(bad, tmp_path / "b")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "b" / "fine.txt").exists()

    sym = tmp_path / "sym.zip"
    with zipfile.ZipFile(sym, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)  # S_IFLNK
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ImoodError, match="links"):
        safe_extract(sym, tmp_path / "s")


def test_damaged_archive_is_a_clear_error(tmp_path):
    arc = tmp_path / "cifar-10-python.tar.gz"
    arc.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ImoodError, match="cannot extract"):
        safe_extract(arc, tmp_path / "out")


def test_md5(tmp_path):
    p = tmp_path / "f.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one read chunk
    p.write_bytes(data)
    assert md5_file(p) == hashlib.md5(data).hexdigest()
    check_md5(p, hashlib.md5(data).hexdigest())
    with pytest.raises(ImoodError, match="does not match the published 0{32}"):
        check_md5(p, "0" * 32)


def test_download_checks_md5_and_leaves_nothing_on_failure(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    dest = tmp_path / "dl" / "file.bin"
    download(src.as_uri(), dest, md5=hashlib.md5(b"payload").hexdigest())
    assert dest.read_bytes() == b"payload"

    other = tmp_path / "dl" / "other.bin"
    with pytest.raises(ImoodError, match="MD5"):
        download(src.as_uri(), other, md5="f" * 32)
    assert not other.exists() and not other.with_name("other.bin.part").exists()

    with pytest.raises(ImoodError, match="could not download .*put it at"):
        download((tmp_path / "nope.bin").as_uri(), tmp_path / "dl" / "x.bin")
