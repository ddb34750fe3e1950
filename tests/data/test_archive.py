"""Safe archive extraction, MD5 checks and downloads (data/archive.py)."""

import hashlib
import io
import os
import stat
import tarfile
import zipfile

import pytest

from imood_cli.data.fetch.archive import check_md5, download, md5_file, safe_extract
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


# ---------------------------------------------------------------- one expected top folder, no overwrites, caps

def tree(folder):
    """Every path under folder (files, folders, links), relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def sentinel(tmp_path):
    """A file beside the data folder: no extraction into the data folder may touch it."""
    path = tmp_path / "sentinel.txt"
    path.write_bytes(b"keep me")
    yield path
    assert path.read_bytes() == b"keep me"


@pytest.mark.parametrize("bad", ["digits/manifest.json", "../x", "cifar-10-batches-py/../../x", "other.txt"])
def test_only_the_expected_top_folder_is_extracted(tmp_path, sentinel, bad):
    data = tmp_path / "data"
    (data / "digits").mkdir(parents=True)
    (data / "digits" / "manifest.json").write_text("{}")
    arc = make_tar(tmp_path / "cifar-10-python.tar.gz", [("cifar-10-batches-py/data_batch_1", b"abc"),
                                                         (bad, b"pwned")])
    with pytest.raises(ImoodError, match="refusing member"):
        safe_extract(arc, data, allowed_top="cifar-10-batches-py")
    assert tree(data) == ["digits", "digits/manifest.json"]
    assert (data / "digits" / "manifest.json").read_text() == "{}" and not (tmp_path / "x").exists()


def test_the_expected_top_folder_alone_is_accepted(tmp_path):
    arc = make_tar(tmp_path / "a.tar.gz", [("./cifar-10-batches-py/data_batch_1", b"1"),
                                           ("cifar-10-batches-py/sub/x", b"2")])
    written = safe_extract(arc, tmp_path / "d", allowed_top="cifar-10-batches-py")
    assert sorted(str(p.relative_to(tmp_path / "d")) for p in written) == [
        "cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/sub/x"]


def test_an_existing_identical_file_is_kept_and_the_rest_completed(tmp_path):
    data = tmp_path / "data"
    (data / "top").mkdir(parents=True)
    (data / "top" / "a").write_bytes(b"same bytes")
    before = os.stat(data / "top" / "a")
    arc = make_tar(tmp_path / "a.tar", [("top/a", b"same bytes"), ("top/b", b"new")], mode="w")
    written = safe_extract(arc, data, allowed_top="top")
    assert written == [data / "top" / "b"] and (data / "top" / "b").read_bytes() == b"new"
    after = os.stat(data / "top" / "a")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten


def test_an_existing_different_file_is_never_overwritten(tmp_path, sentinel):
    data = tmp_path / "data"
    (data / "top").mkdir(parents=True)
    (data / "top" / "b").write_bytes(b"the user's own file")
    arc = make_tar(tmp_path / "a.tar", [("top/a", b"1"), ("top/b", b"archive version"), ("top/c", b"3")], mode="w")
    with pytest.raises(ImoodError) as e:
        safe_extract(arc, data, allowed_top="top")
    assert str(data / "top" / "b") in str(e.value) and "does not overwrite" in str(e.value)
    assert (data / "top" / "b").read_bytes() == b"the user's own file"
    assert tree(data) == ["top", "top/b"]  # top/a, written before the refusal, is removed again


def test_a_fifo_or_folder_in_the_way_is_refused_without_opening_it(tmp_path):
    data = tmp_path / "data"
    (data / "top").mkdir(parents=True)
    os.mkfifo(data / "top" / "a")
    arc = make_tar(tmp_path / "a.tar", [("top/a", b"1")], mode="w")
    with pytest.raises(ImoodError, match="FIFO"):
        safe_extract(arc, data, allowed_top="top")
    assert stat.S_ISFIFO(os.lstat(data / "top" / "a").st_mode)


def test_a_bomb_is_stopped_by_the_declared_sizes_before_anything_is_written(tmp_path, sentinel):
    arc = tmp_path / "bomb.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        add_file(tf, "top/small", b"x")
        info = tarfile.TarInfo("top/zeros")
        info.size = 60 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    assert arc.stat().st_size < 1 << 20  # 60 MB of zeros compress to well under 1 MB
    data = tmp_path / "data"
    with pytest.raises(ImoodError, match="more than 10,485,760 bytes"):
        safe_extract(arc, data, allowed_top="top", max_bytes=10 << 20)
    assert not data.exists()  # the folder made for the extraction is removed again


def test_bytes_are_counted_while_copying(tmp_path, monkeypatch, sentinel):
    """A format whose headers understate the sizes is still stopped at the cap, and leaves nothing."""
    from imood_cli.data.fetch import archive as archive_mod

    monkeypatch.setattr(archive_mod, "_check_caps", lambda *a, **k: None)  # as if the headers had lied
    arc = make_tar(tmp_path / "a.tar.gz", [("top/a", b"1" * 1000), ("top/b", os.urandom(3 << 20))])
    data = tmp_path / "data"
    data.mkdir()
    (data / "mine.txt").write_text("pre-existing")
    with pytest.raises(ImoodError, match="more than 1,048,576 bytes"):
        safe_extract(arc, data, allowed_top="top", max_bytes=1 << 20)
    assert tree(data) == ["mine.txt"]  # no top/a, no temporary file, no top/


def test_too_many_members(tmp_path):
    arc = make_tar(tmp_path / "a.tar", [(f"top/{i}", b"") for i in range(6)], mode="w")
    with pytest.raises(ImoodError, match="more than 5 members"):
        safe_extract(arc, tmp_path / "d", allowed_top="top", max_members=5)
    assert not (tmp_path / "d").exists()


def test_an_io_failure_midway_removes_what_was_written(tmp_path, sentinel):
    data = tmp_path / "data"
    data.mkdir()
    (data / "mine.txt").write_text("pre-existing")
    # top/a is a file, so top/a/b cannot be created: the failure comes after top/a was written.
    arc = make_tar(tmp_path / "a.tar", [("top/a", b"1"), ("top/a/b", b"2")], mode="w")
    with pytest.raises(ImoodError, match="cannot extract"):
        safe_extract(arc, data, allowed_top="top")
    assert tree(data) == ["mine.txt"]


def test_ctrl_c_midway_removes_what_was_written_and_is_not_swallowed(tmp_path, monkeypatch, sentinel):
    from imood_cli.data.fetch import archive as archive_mod

    real = archive_mod._write_new
    calls = []

    def interrupted(src, target, budget, created):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(src, target, budget, created)

    monkeypatch.setattr(archive_mod, "_write_new", interrupted)
    arc = make_tar(tmp_path / "a.tar", [("top/a", b"1"), ("top/b", b"2")], mode="w")
    with pytest.raises(KeyboardInterrupt):
        safe_extract(arc, tmp_path / "data", allowed_top="top")
    assert len(calls) == 2
    assert not (tmp_path / "data").exists()  # top/a, top/ and data/ were all made by this extraction


def test_a_linked_top_folder_is_followed(tmp_path):
    """The user's own link (DATA/top -> another disk) is part of their layout; extraction completes it."""
    other = tmp_path / "big-disk" / "cifar"
    other.mkdir(parents=True)
    (other / "a").write_bytes(b"1")
    data = tmp_path / "data"
    data.mkdir()
    (data / "top").symlink_to(other, target_is_directory=True)
    arc = make_tar(tmp_path / "a.tar", [("top/a", b"1"), ("top/b", b"2")], mode="w")
    assert safe_extract(arc, data, allowed_top="top") == [data / "top" / "b"]
    assert (other / "b").read_bytes() == b"2" and (data / "top").is_symlink()


def test_a_link_inside_the_top_folder_that_leads_out_is_not_written_through(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    data = tmp_path / "data"
    (data / "top").mkdir(parents=True)
    (data / "top" / "sub").symlink_to(outside, target_is_directory=True)
    arc = make_tar(tmp_path / "a.tar", [("top/sub/x", b"pwned")], mode="w")
    with pytest.raises(ImoodError, match="resolves outside"):
        safe_extract(arc, data, allowed_top="top")
    assert list(outside.iterdir()) == []


def test_download_never_replaces_a_file_and_leaves_no_temporary_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "file.bin").write_bytes(b"the user's")
    with pytest.raises(ImoodError, match="does not overwrite"):
        download(src.as_uri(), folder / "file.bin")
    assert (folder / "file.bin").read_bytes() == b"the user's"
    # a user's file named like the old fixed temporary name is not touched either
    (folder / "new.bin.part").write_bytes(b"also the user's")
    with pytest.raises(ImoodError, match="MD5"):
        download(src.as_uri(), folder / "new.bin", md5="0" * 32)
    assert sorted(p.name for p in folder.iterdir()) == ["file.bin", "new.bin.part"]
    assert (folder / "new.bin.part").read_bytes() == b"also the user's"
    with pytest.raises(ImoodError, match="more than 3 bytes"):
        download(src.as_uri(), folder / "big.bin", max_bytes=3)
    assert sorted(p.name for p in folder.iterdir()) == ["file.bin", "new.bin.part"]


def test_download_interrupted_leaves_nothing(tmp_path, monkeypatch):
    import urllib.request

    class Stream(io.BytesIO):
        def read(self, n=-1):
            if self.tell() >= 4:
                raise KeyboardInterrupt
            return super().read(4)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Stream(b"0123456789"))
    folder = tmp_path / "dl"
    with pytest.raises(KeyboardInterrupt):
        download("https://example.invalid/x.bin", folder / "x.bin")
    assert list(folder.iterdir()) == []
