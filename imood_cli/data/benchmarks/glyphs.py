"""`glyphs`: the offline benchmark with a real tail, rendered from the fonts that ship with matplotlib.

ID: 59 classes of letters and digits (0-9, A-Z without I and O, a-z without l: I and l are the same bar in
the sans-serif faces, O and 0 the same oval in the monospace and typewriter ones), 32×32 grayscale, bright
ink on a dark ground. Each image is one glyph of one face, placed on a fixed baseline as in a line of text
(so c and C differ by height, p and P by where they sit), then varied with seeded randomness: rotation,
scale, aspect, shear and translation, stroke width (dilation), blur, ink and background levels, noise.
The class order is a fixed shuffle (`CLASSES`), so head, middle and tail each hold digits, capitals and
small letters. Training images are long-tailed with the CIFAR-LT rule from 500 images of the head class
(6,462 at the default ρ = 0.01: 20 many-shot, 20 medium-shot and 19 few-shot classes, the few-shot ones
with 5-20 images); the test set is balanced, 100 images per class.

OOD test sets, disjoint from ID and from the auxiliary set by class and by source:
- `greek` (near-OOD): 27 Greek letters that look like no Latin letter or digit (Α, Β, Κ, ο, ρ, χ, ... are
  left out), in the same faces (those with Greek) and with the same variation as the ID images;
- `flower-patches` (far-OOD): square crops of scikit-learn's `flower.jpg`, area-averaged to 32×32;
- `noise`: uniform noise, Gaussian blobs and soft-edged blots cut from smooth random fields, a third each.
Both far sets get the glyphs' blur, ink and background levels and noise, so that neither contrast nor
noise alone tells a set from another (raw photo patches and noise are told from glyphs perfectly by any
detector, which says nothing about it). Auxiliary OOD (`symbols-patches-strokes`): symbols and
punctuation (`SYMBOLS`: none a homoglyph of an ID or Greek letter), crops of `china.jpg` made like the
flower ones, and synthetic pen strokes drawn and varied like the glyphs, in turn, so any first N hold all
three kinds: outliers of one kind teach a discriminator that kind alone.

Sources: DejaVu Sans, Serif and Sans Mono in their four faces each (Bitstream Vera licence and public
domain, matplotlib's LICENSE_DEJAVU), STIXGeneral in four faces (SIL Open Font License 1.1, LICENSE_STIX),
and Computer Modern roman, bold, sans, typewriter, text italic and math italic (the BaKoMa TrueType fonts,
BaKoMa Fonts Licence, listed in matplotlib's LICENSE; ID letters and digits only, as they hold no Greek at
its Unicode place; math italic has old-style digits and draws letters only), all from
`matplotlib/mpl-data/fonts/ttf`; the two sample photos of scikit-learn (`sklearn/datasets/images`, CC BY 2.0,
see its README.txt). Rendered with PIL (FreeType), which matplotlib requires; the files are read from the
installed packages, which are never imported for it, and nothing is downloaded.

`imood data prepare glyphs` stores the arrays (uint8, 25 MB at ρ = 0.01) in DATA/glyphs/glyphs-arrays.npz
with its sha256 in manifest.json; `load` reads and checks that file (sha256, keys, dtypes, shapes, labels)
like any input, and builds the arrays in memory (once per process) when there is none. Every image is
a function of (seed, its set, its class, its index) alone, so a split for another ρ takes the first n_k
images of each class from the same streams: the stored file serves any ρ whose counts it covers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import zipfile
from functools import cache, lru_cache
from pathlib import Path

from imood_cli.core.lazy import np, torch
from imood_cli.data.base import Benchmark, FileStatus, ImageSet
from imood_cli.data.manifest import read_recorded_npz, write_manifest
from imood_cli.data.pipeline.augment_spec import AugmentSpec
from imood_cli.data.pipeline.longtail import longtail_counts
from imood_cli.errors import ImoodError
from imood_cli.fs.atomic import atomic_write_bytes
from imood_cli.fs.safe import path_kind, read_capped

SIZE = 32
SEED = 0
DEFAULT_RATIO = 0.01
N_MAX = 500  # training images of the head class
TEST_PER_CLASS = 100
VAL_PER_CLASS = 20  # `validation_id`: for choosing hyperparameters without the test set
# 0-9, A-Z, a-z without I, O, l; shuffled once (numpy default_rng(0).permutation) and written out, so the
# order never depends on a random generator's implementation.
CLASSES = "GTL8ias4txA2kPQjBbWJv31wHMc0U6KpNSdnyYRu9eorgDC7mfz5qEVhZFX"
NUM_CLASSES = len(CLASSES)
# Greek letters that look like no ID glyph: Α Β Ε Ζ Η Ι Κ Μ Ν Ο Ρ Τ Υ Χ and ι κ ν ο ρ υ χ are Latin letters
# in these faces, ς is a c with a tail.
GREEK = "ΓΔΘΛΞΠΣΦΨΩαβγδεζηθλμξπστφψω"
# Symbols and punctuation that are no homoglyph of an ID or Greek letter (so not × ⊂ ∪ ∩ ∨ ∧ ∑ ∏ ∆ ∈ ∝ ∂
# ∅ µ |, nor letters with a bar: $ ¢ € £ ¥), and large enough to be a shape (not . , ' - _ ~ ^).
SYMBOLS = "#%&*+/<=>?@[]{}()!\\§¶©®±÷†‡‰¿¡∀∃∞√≈≠≡≤≥⊕⊗∠←↑→↓↔♠♣♥♦★☆♪☺✓"
NUM_NEAR = 2000
NUM_FLOWER = 2000
NUM_NOISE = 2000
AUX_EACH = 2000  # symbols, china.jpg crops and pen strokes each
NUM_AUX = 3 * AUX_EACH
ARRAYS_FILE = "glyphs-arrays.npz"
MAX_ARRAYS_BYTES = 64 << 20  # the largest imood writes (ρ = 1: 500 training images per class) is about 50 MB
FIXED_SHAPES = {"test": (NUM_CLASSES * TEST_PER_CLASS, SIZE, SIZE), "test_labels": (NUM_CLASSES * TEST_PER_CLASS,),
                "greek": (NUM_NEAR, SIZE, SIZE), "flower_patches": (NUM_FLOWER, SIZE, SIZE),
                "noise": (NUM_NOISE, SIZE, SIZE), "aux": (NUM_AUX, SIZE, SIZE)}
ARRAY_KEYS = ("train", "train_labels", *FIXED_SHAPES)
AUX_KINDS = ("symbol", "china-patch", "stroke")  # aux image i is of kind i % 3

DEJAVU = [f"DejaVu{family}{face}.ttf" for family, faces in
          (("Sans", ("", "-Bold", "-Oblique", "-BoldOblique")), ("Serif", ("", "-Bold", "-Italic", "-BoldItalic")),
           ("SansMono", ("", "-Bold", "-Oblique", "-BoldOblique"))) for face in faces]
STIX = ["STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf"]
COMPUTER_MODERN = ["cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf", "cmmi10.ttf"]
OLDSTYLE_DIGITS = {"cmmi10.ttf"}

# The rendering: a glyph of EM pixels on a MASTER×MASTER canvas (3× the final size), its baseline
# BASELINE_DROP·EM below the centre (the middle of descender and ascender then sits there), inked columns
# centred; thickened there (a max filter of radius 0-3 master pixels: up to 1 final pixel per side),
# box-averaged 2× (antialiased, so the warp at a scale near 1 needs no filter of its own), warped to SIZE.
MASTER = 96
EM = 48
BASELINE_DROP = 0.26
# Seeded variation, per image (lengths in final pixels)
ROTATE_DEG = 10.0
SCALE = 1.1  # the size is drawn log-uniformly in [1/SCALE, SCALE]; case pairs differ in height by about 1.3
ASPECT = 1.06
SHEAR = 0.18
SHIFT_PX = 2.0
DILATE = (0.4, 0.65, 0.85, 1.0)  # cumulative probabilities of the thickening radius 0, 1, 2, 3
BLUR_MAX = 1.0  # Gaussian standard deviation in pixels, uniform; below 0.25 none
BACKGROUND_MAX = 0.3
INK_MIN = 0.6
NOISE_MAX = 0.08
PARAMS = 12  # uniform numbers drawn per image


def _package_dir(name: str) -> Path:
    """An installed package's folder, found without importing it (matplotlib and scikit-learn take
    seconds to import; only their data files are used)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImoodError(f"glyphs needs {name} (an imood dependency), which is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def font_dir() -> Path:
    return _package_dir("matplotlib") / "mpl-data" / "fonts" / "ttf"


def photo(name: str):
    """scikit-learn's sample photo `name` (china.jpg, flower.jpg) as float64 grayscale, read as
    `sklearn.datasets.load_sample_images` reads it (PIL), with ITU-R 601 luma weights."""
    from PIL import Image

    path = _package_dir("sklearn") / "datasets" / "images" / name
    try:
        with Image.open(io.BytesIO(read_capped(path, "scikit-learn sample image", 4 << 20))) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
    except OSError as exc:
        raise ImoodError(f"cannot decode {path}: {exc}") from None
    return rgb @ np.array([0.2989, 0.587, 0.114])


@cache
def _font(face: str):
    from PIL import ImageFont

    path = font_dir() / face
    try:
        return ImageFont.truetype(str(path), EM)
    except OSError as exc:
        raise ImoodError(f"cannot read the font {path} that matplotlib ships: {exc}") from None


@cache
def _cmap(face: str) -> frozenset:
    from fontTools.ttLib import TTFont  # a matplotlib dependency; reads the cmap without rendering

    return frozenset(TTFont(str(font_dir() / face), lazy=True).getBestCmap())


@cache
def faces_for(char: str) -> tuple[str, ...]:
    """The faces that draw `char`: ID glyphs in every face (Computer Modern holds letters and digits at their
    ASCII places), Greek and symbols in the DejaVu and STIX faces whose cmap holds them."""
    if char in CLASSES:
        return tuple(f for f in DEJAVU + STIX + COMPUTER_MODERN if not (char.isdigit() and f in OLDSTYLE_DIGITS))
    return tuple(f for f in DEJAVU + STIX if ord(char) in _cmap(f))


@cache
def _master(char: str, face: str):
    """One glyph on the master canvas (uint8 [MASTER, MASTER]), its inked columns centred."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (MASTER, MASTER), 0)
    ImageDraw.Draw(im).text((MASTER / 2, MASTER / 2 + BASELINE_DROP * EM), char, font=_font(face), fill=255,
                            anchor="ms")
    a = np.asarray(im)
    cols = np.flatnonzero(a.max(axis=0))
    if cols.size == 0:
        raise ImoodError(f"the font {font_dir() / face} draws nothing for {char!r}")
    return np.roll(a, int(round(MASTER / 2 - (cols[0] + cols[-1] + 1) / 2)), axis=1)


def _dilate(images, radius: int):
    """Max filter of radius `radius` (a (2r+1)² square) of [N, H, W] images, 0 beyond the border."""
    for _ in range(radius):
        p = np.pad(images, ((0, 0), (1, 1), (1, 1)))
        rows = np.maximum(np.maximum(p[:, :-2], p[:, 1:-1]), p[:, 2:])
        images = np.maximum(np.maximum(rows[:, :, :-2], rows[:, :, 1:-1]), rows[:, :, 2:])
    return images


def _shrink(images):
    """[N, MASTER, MASTER] uint8 -> PIL images of half the side, each pixel the mean of a 2×2 block."""
    from PIL import Image

    quads = images[:, 0::2, 0::2].astype(np.uint16) + images[:, 0::2, 1::2] + images[:, 1::2, 0::2] \
        + images[:, 1::2, 1::2]
    return [Image.fromarray(q) for q in ((quads + 2) // 4).astype(np.uint8)]


@cache
def _variants(char: str) -> tuple:
    """Per face of `char`, its masters thickened by radius 0..3, shrunk: ((PIL image, ...), ...)."""
    stack = np.stack([_master(char, f) for f in faces_for(char)])
    levels = [_shrink(stack)]
    for _ in range(1, len(DILATE)):
        stack = _dilate(stack, 1)
        levels.append(_shrink(stack))
    return tuple(tuple(level[i] for level in levels) for i in range(len(stack)))


def _radius(u):
    return np.searchsorted(np.asarray(DILATE), u, side="right")


def _warp(masters: list, uniforms, normals):
    """The seeded variation of each (shrunk, thickened) master, one per image, into SIZE×SIZE uint8 images:
    affine warp (PIL, bilinear), then blur, ink and background levels and noise on the whole batch.

    uniforms: [N, PARAMS] in [0, 1); normals: [N, SIZE, SIZE] standard normal (the pixel noise)."""
    from PIL import Image

    u = np.asarray(uniforms, dtype=np.float64)
    n = len(masters)
    theta = np.radians(ROTATE_DEG * (2 * u[:, 1] - 1))
    scale, aspect = SCALE ** (2 * u[:, 2] - 1), ASPECT ** (2 * u[:, 3] - 1)
    shear = SHEAR * (2 * u[:, 4] - 1)
    # the forward map, about the centres (y down), is rotation · shear · scale, then a shift; PIL's AFFINE
    # takes its inverse, output pixel -> master pixel (the shrunk master's pixel is an output pixel)
    sx, sy, cos, sin = scale * aspect, scale / aspect, np.cos(theta), np.sin(theta)
    a11, a12, a21, a22 = cos * sx, (cos * shear - sin) * sy, sin * sx, (sin * shear + cos) * sy
    det = a11 * a22 - a12 * a21
    i11, i12, i21, i22 = a22 / det, -a12 / det, -a21 / det, a11 / det
    ox = SIZE / 2 + SHIFT_PX * (2 * u[:, 5] - 1)
    oy = SIZE / 2 + SHIFT_PX * (2 * u[:, 6] - 1)
    c = MASTER / 4  # the centre of the shrunk master
    coef = np.stack([i11, i12, c - i11 * ox - i12 * oy, i21, i22, c - i21 * ox - i22 * oy], axis=1).tolist()
    out = np.empty((n, SIZE, SIZE), dtype=np.uint8)
    for i, m in enumerate(masters):
        out[i] = np.asarray(m.transform((SIZE, SIZE), Image.AFFINE, coef[i], resample=Image.BILINEAR))
    return _style(out / 255.0, u, normals)


def _style(images, uniforms, normals):
    """The photometric half of the variation, on [N, SIZE, SIZE] images in [0, 1] (1: ink): blur, then ink
    and background levels, then pixel noise; uint8. The OOD sets that are no glyphs get it too, so that
    level, contrast and noise tell no set from another."""
    u = uniforms
    small = _blur(images, BLUR_MAX * u[:, 8])
    background = BACKGROUND_MAX * u[:, 9, None, None]
    ink = INK_MIN + (1 - INK_MIN) * u[:, 10, None, None]
    noisy = background + (ink - background) * small + NOISE_MAX * u[:, 11, None, None] * normals
    return np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)


BLUR_TAPS = 2  # 2σ at the largest σ: the rest of the kernel weighs 5%


def _blur(images, sigma):
    """Gaussian blur of [N, H, W] float images, standard deviation sigma[i] pixels for image i (none below
    0.25), edges extended."""
    out = images.copy()
    pick = sigma >= 0.25
    if pick.any():
        out[pick] = _gauss(images[pick], sigma[pick])
    return out


def _gauss(images, sigma):
    t = np.arange(-BLUR_TAPS, BLUR_TAPS + 1, dtype=np.float64)
    w = np.exp(-t**2 / (2 * sigma[:, None] ** 2))
    w /= w.sum(axis=1, keepdims=True)
    h, width = images.shape[1:]
    p = np.pad(images, ((0, 0), (BLUR_TAPS, BLUR_TAPS), (0, 0)), mode="edge")
    out = sum(w[:, j, None, None] * p[:, j:j + h] for j in range(len(t)))
    p = np.pad(out, ((0, 0), (0, 0), (BLUR_TAPS, BLUR_TAPS)), mode="edge")
    return sum(w[:, j, None, None] * p[:, :, j:j + width] for j in range(len(t)))


def render(chars: list[str], uniforms, normals):
    """Images of `chars` (one each); uniforms[:, 0] picks the face among `faces_for`, uniforms[:, 7] the
    thickening."""
    u = np.asarray(uniforms)
    radius = _radius(u[:, 7])
    masters = []
    for ch, face_u, r in zip(chars, u[:, 0], radius):
        faces = _variants(ch)
        masters.append(faces[min(int(face_u * len(faces)), len(faces) - 1)][r])
    return _warp(masters, u, normals)


# The random streams, one per (seed, part, class, role): each image is a function of its own stream alone,
# whatever else is built and whatever the counts.
TRAIN, TEST, GREEK_PART, FLOWER, NOISE, SYMBOL, CHINA, STROKE, VALIDATION = range(1, 10)
PARAMS_ROLE, NOISE_ROLE, SHAPE_ROLE = range(3)  # variation parameters, pixel noise, crops and pen paths


def _rng(seed: int, part: int, k: int = 0, role: int = PARAMS_ROLE):
    return np.random.default_rng([seed, part, k, role])


def _draws(seed: int, part: int, n: int, k: int = 0):
    """(uniforms [n, PARAMS], normals [n, SIZE, SIZE]) of a stream: numpy fills arrays in order, so the
    first n images are the same whatever n (each class of the training set is one stream, and a split
    for any ρ takes its first n_k images)."""
    return (_rng(seed, part, k).random((n, PARAMS)),
            _rng(seed, part, k, NOISE_ROLE).standard_normal((n, SIZE, SIZE)))


def class_images(k: int, n: int, part: int, seed: int = SEED):
    """The first n images of class k in stream `part` (TRAIN, TEST or VALIDATION)."""
    return render([CLASSES[k]] * n, *_draws(seed, part, n, k))


def labelled(counts: list[int], part: int, seed: int = SEED):
    """(images, labels) with counts[k] images of class k, class-major."""
    images = [class_images(k, n, part, seed) for k, n in enumerate(counts)]
    labels = np.repeat(np.arange(len(counts), dtype=np.uint8), counts)
    return np.concatenate(images), labels


def cycle_images(chars: str, count: int, seed: int, part: int):
    """count images cycling through `chars` (image i is of chars[i % len])."""
    return render([chars[i % len(chars)] for i in range(count)], *_draws(seed, part, count))


def photo_patches(gray, count: int, seed: int, part: int):
    """Square crops of 32, 64, 96 or 128 px at random places, area-averaged to 32×32, stretched to [0, 1]
    (the 1st to the 99th percentile) and styled like the glyphs (`_style`)."""
    rng = _rng(seed, part, role=SHAPE_ROLE)
    h, w = gray.shape
    out = np.empty((count, SIZE, SIZE), dtype=np.float64)
    for i in range(count):
        f = int(rng.integers(1, 5))
        side = SIZE * f
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out[i] = gray[y:y + side, x:x + side].reshape(SIZE, f, SIZE, f).mean(axis=(1, 3))
    lo, hi = np.percentile(out.reshape(count, -1), [1, 99], axis=1)
    out = np.clip((out - lo[:, None, None]) / np.maximum(hi - lo, 1.0)[:, None, None], 0, 1)
    return _style(out, *_draws(seed, part, count))


def pen_strokes(count: int, seed: int):
    """1-3 quadratic Bezier curves per image, drawn with a pen 3-7 master pixels wide where a glyph would
    be, then thickened and varied like the glyphs: shapes of the glyphs' make that are no glyph."""
    from PIL import Image, ImageDraw

    rng = _rng(seed, STROKE, role=SHAPE_ROLE)
    u, normals = _draws(seed, STROKE, count)
    t = np.linspace(0.0, 1.0, 20)[:, None]
    stack = np.empty((count, MASTER, MASTER), dtype=np.uint8)
    for i in range(count):
        im = Image.new("L", (MASTER, MASTER), 0)
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 4))):
            p = rng.uniform(MASTER / 2 - EM * 0.55, MASTER / 2 + EM * 0.55, size=(3, 2))
            curve = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2]
            draw.line(curve.ravel().tolist(), fill=255, width=int(rng.integers(3, 8)))
        stack[i] = np.asarray(im)
    radius = _radius(u[:, 7])
    for r in range(1, len(DILATE)):
        pick = radius == r
        stack[pick] = _dilate(stack[pick], r)
    return _warp(_shrink(stack), u, normals)


def noise_images(count: int, seed: int):
    """A third uniform noise, a third 1-3 Gaussian blobs, a third smooth random fields cut at a random level
    into soft-edged blots (a 4×4 to 8×8 grid of uniform values, bilinearly upsampled); all styled like
    the glyphs (`_style`)."""
    from PIL import Image

    rng = _rng(seed, NOISE, role=SHAPE_ROLE)
    third = count // 3
    out = np.empty((count, SIZE, SIZE), dtype=np.float64)
    out[:third] = rng.random((third, SIZE, SIZE))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(third, 2 * third):
        blobs = np.zeros((SIZE, SIZE))
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(4, SIZE - 5, size=2)
            sigma = rng.uniform(1.5, 6.0)
            blobs = np.maximum(blobs, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))
        out[i] = blobs
    for i in range(2 * third, count):
        g = int(rng.integers(4, 9))
        coarse = Image.fromarray(rng.random((g, g)).astype(np.float32), mode="F")
        field = np.asarray(coarse.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float64)
        cut = np.quantile(field, rng.uniform(0.6, 0.85))
        out[i] = 1 / (1 + np.exp(-(field - cut) / 0.03))
    return _style(out, *_draws(seed, NOISE, count))


def interleave(*parts):
    """parts[0][0], parts[1][0], ..., parts[0][1], ...: every prefix holds each kind."""
    return np.stack(parts, axis=1).reshape(-1, SIZE, SIZE)


def train_counts(ratio: float) -> list[int]:
    return longtail_counts(N_MAX, NUM_CLASSES, ratio)


def build_arrays(imbalance_ratio: float = DEFAULT_RATIO, seed: int = SEED) -> dict:
    """Every array of the benchmark, the training images for ρ = imbalance_ratio. Built once per process
    and (ρ, seed) (2-3 s on two cores); each call gets its own copies, so a caller that writes into them
    changes no other."""
    return {key: a.copy() for key, a in _built_arrays(tuple(train_counts(imbalance_ratio)), seed).items()}


@lru_cache(maxsize=2)
def _built_arrays(counts: tuple[int, ...], seed: int) -> dict:
    train, train_labels = labelled(list(counts), TRAIN, seed)
    test, test_labels = labelled([TEST_PER_CLASS] * NUM_CLASSES, TEST, seed)
    arrays = {
        "train": train, "train_labels": train_labels, "test": test, "test_labels": test_labels,
        "greek": cycle_images(GREEK, NUM_NEAR, seed, GREEK_PART),
        "flower_patches": photo_patches(photo("flower.jpg"), NUM_FLOWER, seed, FLOWER),
        "noise": noise_images(NUM_NOISE, seed),
        "aux": interleave(cycle_images(SYMBOLS, AUX_EACH, seed, SYMBOL),
                          photo_patches(photo("china.jpg"), AUX_EACH, seed, CHINA), pen_strokes(AUX_EACH, seed)),
    }
    for a in arrays.values():
        a.setflags(write=False)  # the cached originals: only copies leave this module
    return arrays


def validation_id(per_class: int = VAL_PER_CLASS, seed: int = SEED) -> ImageSet:
    """A balanced ID set from streams no split uses (neither train for any ρ nor test): for choosing
    hyperparameters, such as the energy margins, without the test set."""
    images, labels = labelled([per_class] * NUM_CLASSES, VALIDATION, seed)
    return ImageSet("glyphs-val", torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(images).unsqueeze(1))


def arrays_bytes(arrays: dict) -> bytes:
    """An .npz (uncompressed, as np.savez writes) with fixed member dates, so the same arrays give the same
    bytes and the same sha256 (np.savez stamps each member with the time of writing)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[key]), allow_pickle=False)
    return buf.getvalue()


def check_arrays(arrays: dict, path: Path) -> None:
    """Keys, dtypes, shapes and labels of stored arrays; an ImoodError naming `path` when one is off."""
    redo = "delete it and run `imood data prepare glyphs`"
    if set(arrays) != set(ARRAY_KEYS):
        raise ImoodError(f"{path}: expected the arrays {', '.join(sorted(ARRAY_KEYS))}, found "
                         f"{', '.join(sorted(arrays)) or 'none'}; {redo}")
    for key in ARRAY_KEYS:
        if arrays[key].dtype != np.uint8:
            raise ImoodError(f"{path}: {key} should be uint8, found {arrays[key].dtype}; {redo}")
    for key, shape in FIXED_SHAPES.items():
        if arrays[key].shape != shape:
            raise ImoodError(f"{path}: {key} should have the shape {shape}, found {arrays[key].shape}; {redo}")
    labels, train = arrays["train_labels"], arrays["train"]
    if labels.ndim != 1 or train.shape != (len(labels), SIZE, SIZE) or not len(labels):
        raise ImoodError(f"{path}: train should be [N, {SIZE}, {SIZE}] with N = len(train_labels) > 0, found "
                         f"{train.shape} and {labels.shape}; {redo}")
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    if int(labels.max()) >= NUM_CLASSES or (np.diff(labels.astype(np.int64)) < 0).any() or counts.min() < 1 \
            or counts.max() > N_MAX:
        raise ImoodError(f"{path}: train_labels should be class-major, each of the {NUM_CLASSES} classes 1 to "
                         f"{N_MAX} times; {redo}")
    if not np.array_equal(arrays["test_labels"], np.repeat(np.arange(NUM_CLASSES), TEST_PER_CLASS)):
        raise ImoodError(f"{path}: test_labels should be {TEST_PER_CLASS} of each class in order; {redo}")


def read_arrays(folder: Path):
    """(the stored arrays of DATA/glyphs/, their file's sha256), checked against manifest.json; None when
    there is no file."""
    path = Path(folder) / ARRAYS_FILE
    if path_kind(path) is None:
        return None
    redo = "delete it (imood then builds the arrays in memory) and run `imood data prepare glyphs` to store them again"
    arrays, expected = read_recorded_npz(folder, ARRAYS_FILE, "glyphs arrays", MAX_ARRAYS_BYTES, redo)
    check_arrays(arrays, path)
    return arrays, expected


def covers(arrays: dict, counts: list[int]) -> bool:
    return bool((np.bincount(arrays["train_labels"], minlength=NUM_CLASSES) >= np.asarray(counts)).all())


def take_train(arrays: dict, counts: list[int]):
    """The first counts[k] stored training images of each class k (the same images a build for these
    counts gives, since each class is one stream)."""
    labels = arrays["train_labels"]
    starts = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=NUM_CLASSES))[:-1]])
    keep = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, counts)])
    return arrays["train"][keep], labels[keep]


class Glyphs:
    name = "glyphs"
    description = ("offline benchmark with a real tail: 59 letters and digits rendered from matplotlib's fonts, "
                   "long-tailed, vs Greek letters, photo patches, noise; aux OOD: symbols, photo patches, strokes")
    default_imbalance_ratio = DEFAULT_RATIO

    def status(self, root: Path) -> list[FileStatus]:
        path = Path(root) / self.name / ARRAYS_FILE
        detail = (f"stored in {path}" if path_kind(path) is not None
                  else "rendered at each load (`imood data prepare glyphs` stores them)")
        return [FileStatus("matplotlib fonts and scikit-learn sample images",
                           Path("(inside matplotlib and scikit-learn)"), True,
                           "ships with matplotlib and scikit-learn; nothing to download", detail)]

    def prepare(self, root: Path, imbalance_ratio: float | None = None, num_ood_samples: int | None = None,
                **_) -> dict:
        """Store the arrays under DATA/glyphs/ (unless a checked copy that covers ρ is there) and write the
        manifest.

        A stored file that does not cover ρ is removed first and the manifest written before the new file:
        cut short anywhere, `load` finds either no file (and builds the arrays) or the file the manifest
        records.
        """
        folder = Path(root) / self.name
        ratio = self.default_imbalance_ratio if imbalance_ratio is None else imbalance_ratio
        counts = train_counts(ratio)
        stored = read_arrays(folder)
        raw = None
        if stored is not None and covers(stored[0], counts):
            arrays, sha = stored
        else:
            arrays = build_arrays(ratio)
            raw = arrays_bytes(arrays)
            sha = hashlib.sha256(raw).hexdigest()
            if stored is not None:
                try:
                    (folder / ARRAYS_FILE).unlink()
                except OSError as exc:
                    raise ImoodError(f"cannot replace {folder / ARRAYS_FILE}: {exc.strerror or exc}") from None
        bench = self._benchmark(arrays, ratio, num_ood_samples, ood_tests=True)
        stored_counts = np.bincount(arrays["train_labels"], minlength=NUM_CLASSES).tolist()
        manifest = write_manifest(folder, bench, source="fonts of matplotlib (DejaVu, STIX, Computer Modern) and "
                                  "scikit-learn's sample images, rendered with PIL",
                                  options={"imbalance_ratio": ratio, "seed": SEED, "verified": True},
                                  extra={"arrays": {"file": ARRAYS_FILE, "sha256": sha,
                                                    "train_counts": stored_counts}})
        if raw is not None:
            try:
                atomic_write_bytes(folder / ARRAYS_FILE, raw)
            except OSError as exc:
                raise ImoodError(f"cannot write {folder / ARRAYS_FILE}: {exc.strerror or exc}") from None
        return manifest

    def load(self, root: Path | None = None, imbalance_ratio: float | None = None, num_ood_samples: int | None = None,
             ood_tests: bool = True, **_) -> Benchmark:
        """The benchmark, from DATA/glyphs/glyphs-arrays.npz when `prepare` stored it (checked) and it covers
        ρ, else rendered in memory. num_ood_samples: None for all 6,000 auxiliary images, 0 for none."""
        ratio = self.default_imbalance_ratio if imbalance_ratio is None else imbalance_ratio
        counts = train_counts(ratio)
        stored = read_arrays(Path(root) / self.name) if root is not None else None
        if stored is not None and covers(stored[0], counts):
            arrays = stored[0]
        else:
            arrays = build_arrays(ratio)
        return self._benchmark(arrays, ratio, num_ood_samples, ood_tests)

    def _benchmark(self, arrays: dict, ratio: float, num_ood_samples: int | None, ood_tests: bool) -> Benchmark:
        if num_ood_samples is not None and not 0 <= num_ood_samples <= NUM_AUX:
            raise ImoodError(f"--num_ood_samples for glyphs must be in 0..{NUM_AUX:,}, got {num_ood_samples}")
        counts = train_counts(ratio)
        train, train_labels = take_train(arrays, counts)
        as_set = lambda name, a: ImageSet(name, torch.full((len(a),), -1, dtype=torch.long),
                                          torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(1))
        sets = {}
        if ood_tests:
            sets = {"greek": as_set("greek", arrays["greek"]),
                    "flower-patches": as_set("flower-patches", arrays["flower_patches"]),
                    "noise": as_set("noise", arrays["noise"])}
        n_aux = NUM_AUX if num_ood_samples is None else num_ood_samples
        aux = as_set("symbols-patches-strokes", arrays["aux"][:n_aux]) if n_aux else None
        to_labels = lambda a: torch.from_numpy(a.astype(np.int64))
        return Benchmark(
            name=self.name,
            num_classes=NUM_CLASSES,
            class_counts=counts,
            train=ImageSet("glyphs-train-lt", to_labels(train_labels), torch.from_numpy(train).unsqueeze(1)),
            test=ImageSet("glyphs-test", to_labels(arrays["test_labels"]),
                          torch.from_numpy(np.ascontiguousarray(arrays["test"])).unsqueeze(1)),
            ood_tests=sets,
            aux_ood=aux,
            channels=1,
            image_size=SIZE,
            augment=AugmentSpec(crop_padding=2),
            class_names=list(CLASSES),
            description=self.description,
        )
