"""`cifar10`, `cifar100`: the CIFAR-LT benchmarks (docs/data.md).

ID: the CIFAR python batches under `$DATA/cifar-10-batches-py/` or `$DATA/cifar-100-python/`,
long-tailed with n_k = int(n_max · ρ^(k/(K−1))) (n_max 5000 / 500), keeping the first n_k images of
each class in the original order; test: the full balanced test batch. OOD test: the six SCOOD sets.
Auxiliary OOD: the first `num_ood_samples` (30,000) of the 300K random images.

The batches are pickles. They are read with a restricted unpickler that only resolves the numpy
globals an array needs; a pickle that names anything else (os.system, builtins.eval, ...) is
refused before it can run, and any other way a batch can fail to load (a length field that claims
a terabyte, a truncated file) is one ImoodError naming the file. Their MD5s are checked against
the published ones when verify is True; verify=None follows DATA/<name>/manifest.json.

Only the ID part is required. Missing SCOOD sets are left out of `Benchmark.ood_tests` and named in
`Benchmark.missing`; the 300K file is needed only when auxiliary OOD is asked for
(num_ood_samples != 0), and `prepare` records it as missing instead of failing.
"""

from __future__ import annotations

import codecs
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

from imood_cli.core.lazy import np, torch
from imood_cli.data.base import Benchmark, FileStatus, ImageSet, missing_phrase
from imood_cli.data.benchmarks import scood, tinyimages
from imood_cli.data.fetch.archive import check_md5, safe_extract
from imood_cli.data.fetch.archive import download as fetch
from imood_cli.data.manifest import resolve_verify, write_manifest
from imood_cli.data.pipeline.augment_spec import CIFAR_AUGMENT
from imood_cli.data.pipeline.longtail import check_imbalance_ratio, longtail_counts, longtail_indices
from imood_cli.errors import ImoodError
from imood_cli.fs.safe import NotRegularFile, absent_or_kind, is_regular_file, open_regular, path_kind

IMAGE_SIZE = 32
DEFAULT_RATIO = 0.01
EXTRACT_CAP = 2 << 30  # bytes: the CIFAR archives unpack to 178 MB; a file that inflates past this is not one
TINYIMAGES_CAP = 1 << 30  # bytes: the 300K file is 921,600,128


# ---------------------------------------------------------------- safe unpickling

class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    """`_codecs.encode`, as protocol-2 pickles of bytes call it, limited to latin-1."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise RefusedGlobal(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin-1")


def _allowed_globals() -> dict[tuple[str, str], object]:
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, whatever numpy calls its module
    scalar = np.uint8(0).__reduce__()[0]
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                              ("_codecs", "encode"): _latin1_encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals that numpy arrays need; refuses everything else."""

    _allowed = None

    def find_class(self, module: str, name: str):
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _allowed_globals()
        obj = RestrictedUnpickler._allowed.get((module, name))
        if obj is None:
            raise RefusedGlobal(f"global {module}.{name} is not allowed")
        return obj


def safe_load_pickle(path: Path):
    """Unpickle a CIFAR batch file with RestrictedUnpickler (latin-1 for Python 2 strings, as torchvision).

    Whatever a damaged or hostile file does (a length field of 2^40 bytes: MemoryError; nesting:
    RecursionError; ...) ends as one ImoodError naming it. Ctrl-C is not caught.
    """
    try:
        with open_regular(path, "CIFAR batch") as f:
            return RestrictedUnpickler(f, encoding="latin1").load()
    except RefusedGlobal as exc:
        raise ImoodError(f"{path}: refusing to unpickle it ({exc}): a CIFAR batch holds only arrays, lists and "
                         "strings; this file is not one") from None
    except ImoodError:
        raise
    except FileNotFoundError:
        raise ImoodError(f"{path} is missing; run `imood data prepare` again") from None
    except MemoryError:
        raise ImoodError(f"{path} is not a readable CIFAR batch (it asks for more memory than there is: a length "
                         "field is damaged); delete it and prepare again") from None
    except Exception as exc:  # the unpickler and numpy raise many types for bad bytes; none may escape as a traceback
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ImoodError(f"{path} is not a readable CIFAR batch ({' '.join(detail.split())[:200]}); "
                         "delete it and prepare again") from None


def _str_keys(d) -> dict:
    if not isinstance(d, dict):
        raise TypeError(f"expected a dict, found {type(d).__name__}")
    return {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in d.items()}


# ---------------------------------------------------------------- the two benchmarks

@dataclass(frozen=True)
class CifarInfo:
    name: str
    title: str
    folder: str
    archive: str
    archive_md5: str
    train: tuple[tuple[str, str], ...]
    test: tuple[tuple[str, str], ...]
    meta: tuple[str, str]
    names_key: str
    label_key: str
    num_classes: int
    n_max: int

    @property
    def url(self) -> str:
        return f"https://www.cs.toronto.edu/~kriz/{self.archive}"


CIFAR10 = CifarInfo(
    "cifar10", "CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
    train=(("data_batch_1", "c99cafc152244af753f735de768cd75f"), ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
           ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"), ("data_batch_4", "634d18415352ddfa80567beed471001a"),
           ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")),
    test=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
    meta=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"), names_key="label_names", label_key="labels",
    num_classes=10, n_max=5000)

CIFAR100 = CifarInfo(
    "cifar100", "CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
    train=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
    test=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
    meta=("meta", "7973b15100ade9c7d40fb424638fde48"), names_key="fine_label_names", label_key="fine_labels",
    num_classes=100, n_max=500)


def read_batches(folder: Path, files: tuple[tuple[str, str], ...], label_key: str,
                 num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, 3, 32, 32] images and long labels of the batch files, concatenated in order."""
    images, labels = [], []
    for fname, _ in files:
        path = folder / fname
        d = safe_load_pickle(path)
        if not isinstance(d, dict):
            raise ImoodError(f"{path} is not a CIFAR batch: it holds a {type(d).__name__}, not a dict")
        d = _str_keys(d)
        for key in ("data", label_key):
            if key not in d:
                raise ImoodError(f"{path} is not a CIFAR batch: no {key!r} entry")
        data, lab = d["data"], d[label_key]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise ImoodError(f"{path}: 'data' should be uint8 [N, 3072], found {what}")
        try:
            lab = np.asarray(lab)
        except (ValueError, TypeError, OverflowError, MemoryError):
            lab = np.asarray([], dtype=object)
        if lab.shape != (data.shape[0],) or not np.issubdtype(lab.dtype, np.integer):
            raise ImoodError(f"{path}: {label_key} should be {data.shape[0]} integers, found {lab.dtype} {lab.shape}")
        if len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
            raise ImoodError(f"{path}: labels outside 0..{num_classes - 1}")
        images.append(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE))
        labels.append(lab.astype(np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def read_class_names(folder: Path, info: CifarInfo) -> list[str] | None:
    """The class names of the meta file; None when it has none (they only label reports)."""
    path = folder / info.meta[0]
    if not is_regular_file(path):
        return None
    meta = safe_load_pickle(path)
    if not isinstance(meta, dict):
        return None
    names = _str_keys(meta).get(info.names_key)
    if not isinstance(names, list) or len(names) != info.num_classes:
        return None
    return [n.decode("latin-1") if isinstance(n, bytes) else str(n) for n in names]


class Cifar:
    """A CIFAR-LT benchmark; `Cifar10` and `Cifar100` are the registered ones."""

    info: CifarInfo = CIFAR10
    default_imbalance_ratio = DEFAULT_RATIO

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def description(self) -> str:
        i = self.info
        n = sum(longtail_counts(i.n_max, i.num_classes, DEFAULT_RATIO))
        return (f"{i.title}-LT (ρ=0.01: {n:,} train images) vs the six SCOOD test sets; "
                f"aux OOD: 300K random images")

    # ---- where things are
    def folder(self, root: Path) -> Path:
        return Path(root) / self.info.folder

    def _batch_files(self) -> list[tuple[str, str]]:
        return [*self.info.train, *self.info.test, self.info.meta]

    def _absent_batches(self, root: Path) -> list[str]:
        return [f for f, _ in self._batch_files() if not is_regular_file(self.folder(root) / f)]

    def _how(self, root: Path) -> str:
        i = self.info
        return f"`imood data prepare {i.name}` downloads {i.url} (or put {i.archive} in {root}/ and prepare)"

    def _id_status(self, root: Path) -> list[FileStatus]:
        i, folder = self.info, self.folder(root)
        archive = Path(root) / i.archive
        out = []
        for what, files in ((f"ID train: {i.title} training batches", [*i.train, i.meta]),
                            (f"ID test: {i.title} test batch", list(i.test))):
            absent = [f for f, _ in files if not is_regular_file(folder / f)]
            detail = ""
            if absent:
                detail = "missing " + ", ".join(f if absent_or_kind(folder / f) == "missing"
                                                else f"{f} ({absent_or_kind(folder / f)})" for f in absent)
                if is_regular_file(archive):
                    detail += f"; {archive.name} is present: `imood data prepare {i.name}` extracts it"
            path = folder if len(files) > 1 else folder / files[0][0]
            out.append(FileStatus(what, path, not absent, self._how(root), detail))
        return out

    def status(self, root: Path) -> list[FileStatus]:
        root = Path(root)
        return [*self._id_status(root), *scood.status(root, self.info.name), tinyimages.status(root)]

    def _missing_id(self, root: Path) -> str | None:
        """One phrase naming the absent batch files, where they go and how to get them; None when all are there."""
        i = self.info
        absent = self._absent_batches(root)
        if not absent:
            return None
        folder = self.folder(root)
        odd = [f"{f} is {absent_or_kind(folder / f)}" for f in absent if path_kind(folder / f) is not None]
        files = "" if len(absent) == len(self._batch_files()) else f" {', '.join(absent)}"
        archive = Path(root) / i.archive
        how = (f"{archive.name} is there: `imood data prepare {i.name} --drp {root}` extracts it"
               if is_regular_file(archive) and not odd
               else f"`imood data prepare {i.name} --drp {root}` downloads {i.url}, or put {i.archive} in {root}/")
        return f"the {i.title} batches{files} in {folder} ({'; '.join([*odd, how])})"

    def missing_pieces(self, root: Path) -> dict[str, str]:
        """Every optional piece not on disk (SCOOD sets, the 300K file) -> where to get it."""
        out = scood.missing_sets(root, self.info.name)
        if not tinyimages.present(root):
            out[tinyimages.SET_NAME] = f"the 300K random images {tinyimages.tinyimages_path(root)} " \
                                       f"({tinyimages.how_to_get(root)})"
        return out

    def _not_ready(self, required: list[str], root: Path) -> ImoodError:
        """One line: what must be there first, then the absent OOD test sets (the 300K file is named only
        when it was asked for, and then among the required)."""
        optional = self.missing_pieces(root)
        optional.pop(tinyimages.SET_NAME, None)
        also = f" (also missing, not needed to start: {missing_phrase(optional)})" if optional else ""
        return ImoodError(f"{self.info.name} is not ready, missing: {'; '.join(required)}{also}")

    # ---- prepare
    def _ensure_batches(self, root: Path, verify: bool, download: bool) -> str:
        i, root = self.info, Path(root)
        if not self._absent_batches(root):
            return f"{self.folder(root)} (already present)"
        archive = root / i.archive
        if not is_regular_file(archive):
            if os.path.lexists(archive):
                raise NotRegularFile(archive, path_kind(archive) or "unreadable", f"{i.title} archive")
            if not download:
                return "missing (not downloaded: --no-download)"
            fetch(i.url, archive, md5=i.archive_md5 if verify else None, max_bytes=EXTRACT_CAP)
        elif verify:
            check_md5(archive, i.archive_md5)
        safe_extract(archive, root, allowed_top=i.folder, max_bytes=EXTRACT_CAP)
        return f"extracted from {archive}"

    def prepare(self, root: Path, imbalance_ratio: float | None = None, num_ood_samples: int | None = None,
                verify: bool | None = True, download: bool = True, **_) -> dict:
        """Make the ID part ready (download, check, extract), build the split and write the manifest.

        Optional pieces that are absent (SCOOD sets, the 300K file when it cannot be downloaded) are
        recorded in the manifest's `missing` instead of stopping; only a missing ID part is an error.
        """
        root = Path(root)
        verify = resolve_verify(verify, root / self.info.name)
        got = self._ensure_batches(root, verify, download)
        id_missing = self._missing_id(root)
        if id_missing:
            raise self._not_ready([id_missing], root)
        need_aux = num_ood_samples != 0
        failed_download = {}
        if download and need_aux and not os.path.lexists(tinyimages.tinyimages_path(root)):
            try:
                fetch(tinyimages.URL, tinyimages.tinyimages_path(root), max_bytes=TINYIMAGES_CAP)
            except ImoodError as exc:  # optional: recorded as missing with the reason
                failed_download[tinyimages.SET_NAME] = str(exc)
        aux_here = tinyimages.present(root)
        bench = self.load(root, imbalance_ratio=imbalance_ratio, num_ood_samples=num_ood_samples if aux_here else 0,
                          verify=verify)
        missing = {**self.missing_pieces(root), **failed_download}
        ratio = self.default_imbalance_ratio if imbalance_ratio is None else imbalance_ratio
        where = {"train": str(self.folder(root)), "test": str(self.folder(root)),
                 "aux_ood": str(tinyimages.tinyimages_path(root))}
        for n in scood.SETS:
            where[scood.display_name(self.info.name, n)] = str(scood.imglist_path(root, self.info.name, n))
        pieces = {"train": True, "test": True, tinyimages.SET_NAME: aux_here,
                  **{scood.display_name(self.info.name, n): scood.display_name(self.info.name, n) not in missing
                     for n in scood.SETS}}
        options = {"imbalance_ratio": ratio, "n_max": bench.class_counts[0] if bench.class_counts else None,
                   "num_ood_samples": len(bench.aux_ood) if bench.aux_ood is not None else 0,
                   "verified": bool(verify), "cifar": got}
        return write_manifest(root / self.info.name, bench, options=options, where=where, missing=missing,
                              pieces=pieces, source=f"{self.info.url}; SCOOD {scood.URL}; {tinyimages.URL}")

    # ---- load
    def load(self, root: Path, imbalance_ratio: float | None = None, num_ood_samples: int | None = None,
             verify: bool | None = None, ood_tests: bool = True, **_) -> Benchmark:
        """The benchmark. verify: check the published MD5s (None: as the manifest recorded, True without
        one); ood_tests=False skips the OOD test sets (training does not need them); num_ood_samples=0:
        no auxiliary OOD. Missing OOD test sets are named in `Benchmark.missing`."""
        i, root = self.info, Path(root)
        ratio = self.default_imbalance_ratio if imbalance_ratio is None else float(imbalance_ratio)
        check_imbalance_ratio(ratio)
        if num_ood_samples is not None and num_ood_samples < 0:
            raise ImoodError(f"--num_ood_samples must be >= 0, got {num_ood_samples}")
        aux_required = num_ood_samples != 0 and not tinyimages.present(root)
        required = [self._missing_id(root)]
        if aux_required:
            required.append(tinyimages.missing_text(root) + " (or pass --num_ood_samples 0 to go without it)")
        required = [r for r in required if r]
        if required:
            raise self._not_ready(required, root)
        folder = self.folder(root)
        if resolve_verify(verify, root / i.name):
            for fname, md5 in self._batch_files():
                check_md5(folder / fname, md5, what=f"{i.title} {fname}")
        train_images, train_labels = read_batches(folder, i.train, i.label_key, i.num_classes)
        test_images, test_labels = read_batches(folder, i.test, i.label_key, i.num_classes)
        per_class = torch.bincount(train_labels, minlength=i.num_classes)
        # The published files hold n_max images per class. Unverified files with fewer (a subset made
        # for testing) get the same rule at their own scale rather than an error.
        n_max = min(i.n_max, int(per_class.min()))
        if n_max < 1:
            raise ImoodError(f"{folder}: class {int(per_class.argmin())} has no training image")
        counts = longtail_counts(n_max, i.num_classes, ratio)
        if min(counts) < 1:
            raise ImoodError(f"--imbalance_ratio {ratio} leaves class {counts.index(min(counts))} without images")
        keep = longtail_indices(train_labels, counts)
        sets, missing = {}, {}
        if ood_tests:
            sets, missing = scood.load_present_sets(root, i.name, i.num_classes, IMAGE_SIZE,
                                                    cache_dir=root / i.name / "cache")
        aux = None if num_ood_samples == 0 else tinyimages.load_tinyimages(root, num_ood_samples)
        return Benchmark(
            name=i.name,
            num_classes=i.num_classes,
            class_counts=counts,
            train=ImageSet(f"{i.name}-lt-train", train_labels[keep], train_images[keep]),
            test=ImageSet(f"{i.name}-test", test_labels, test_images),
            ood_tests=sets,
            aux_ood=aux,
            channels=3,
            image_size=IMAGE_SIZE,
            augment=CIFAR_AUGMENT,
            class_names=read_class_names(folder, i),
            description=self.description,
            missing=missing,
        )


class Cifar10(Cifar):
    info = CIFAR10


class Cifar100(Cifar):
    info = CIFAR100
