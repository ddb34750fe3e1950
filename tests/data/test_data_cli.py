"""`imood data list`: starts without torch and reads well at 80 columns; its JSON keeps its shape."""

import json
import os
import re
import subprocess
import sys

from fixtures_data import write_cifar, write_scood

HEAVY = ("torch", "timm", "matplotlib")


def test_data_list_imports_no_torch_timm_or_matplotlib(tmp_path):
    write_cifar(tmp_path, "cifar10", per_class=2)
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "imood_cli", "data", "list", "--drp",
                           str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "imood_cli" in imported and "cifar10: usable" in done.stdout  # the check saw a real run
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_dataset_modules_import_without_torch():
    code = ("import sys\n"
            "import imood_cli.cli.data, imood_cli.data.benchmarks.cifar, imood_cli.data.benchmarks.digits\n"
            "import imood_cli.data.benchmarks.imagenet_lt\n"
            "import imood_cli.data.pipeline.folder, imood_cli.data.manifest, imood_cli.data.fetch.archive\n"
            "from imood_cli.registry import registry\n"
            "r = registry()\n"
            "[r.dataset(n).status('.') for n in r.names('dataset')]\n"
            "print(sorted(m for m in ('torch', 'timm', 'matplotlib', 'numpy', 'sklearn', 'PIL') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_data_list_at_80_columns(tmp_path, cli, monkeypatch):
    write_cifar(tmp_path, "cifar10", per_class=2)
    write_scood(tmp_path, "cifar10", per_set=1)
    (tmp_path / "SCOOD" / "data" / "imglist" / "benchmark_cifar10" / "test_lsun.txt").unlink()
    code, out, err = cli(["data", "list", "--drp", tmp_path, "--json"])
    assert code == 0, err
    rows = json.loads(out)
    monkeypatch.setenv("COLUMNS", "80")
    code, text, err = cli(["data", "list", "--drp", tmp_path])
    assert code == 0, err
    lines = text.splitlines()
    assert "…" not in text and "..." not in text
    urls = {u.rstrip(".,;)") for row in rows for f in row["files"] if not f["present"]
            for u in re.findall(r"https?://\S+", f["how_to_get"])}
    assert len(urls) >= 4
    for url in urls:  # every URL whole, on a line of its own
        assert any(line.strip().strip("(.,;)") == url for line in lines), url
    for row in rows:
        for f in row["files"]:  # every path whole, on a line of its own
            assert any(line.strip() == f["path"] for line in lines), f["path"]
    for line in lines:  # only a single word that cannot fit may pass 80 columns
        assert len(line) <= 80 or " " not in line.strip(), line
    blocks = text.split("\n\n")
    heads = [b.splitlines()[0] for b in blocks[1:]]
    assert heads[:2] == ["cifar10: usable: 2 optional piece(s) missing",
                         "cifar100: not ready: 9 of 10 pieces missing"]
    cifar10 = blocks[1]
    assert "  missing  OOD test: SCOOD lsun list (optional)" in cifar10
    assert "  present  ID train: CIFAR-10 training batches" in cifar10


def test_data_list_json_keeps_its_keys(tmp_path, cli):
    code, out, err = cli(["data", "list", "--drp", tmp_path, "--json"])
    assert code == 0, err
    rows = json.loads(out)
    assert sorted(r["name"] for r in rows) == ["cifar10", "cifar100", "digits", "glyphs", "imagenet"]
    for row in rows:
        assert list(row) == ["name", "description", "ready", "files"]
        for f in row["files"]:
            assert list(f) == ["what", "path", "present", "how_to_get", "detail"]
