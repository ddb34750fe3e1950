"""Your own model and your own data, offline, end to end.

1. Writes an ImageFolder from scikit-learn's digits (0-5 are the classes, long-tailed; 6-9 are the OOD images).
2. Prepares it as a benchmark: `imood data prepare folder`.
3. Builds a timm ResNet18 for those 6 classes (random weights here; `--epochs N` trains it briefly in plain
   PyTorch first, as your own training code would) and saves its state dict.
4. Imports it: `imood import-model --timm resnet18 --weights FILE`.
5. Scores it with every detector (`imood score -m all`) and evaluates one (`imood eval`).

    python examples/own_model.py                    # into ./own-model-example
    python examples/own_model.py --workdir /tmp/x --epochs 3

Each step prints the command you would type; the commands run in this process.
"""

from __future__ import annotations

import argparse
import json
import shlex
from contextlib import nullcontext, redirect_stdout
from io import StringIO
from pathlib import Path

ID_CLASSES = 6
LONG_TAIL = (100, 60, 36, 22, 13, 8)  # training images per class: class 0 the head
TEST_PER_CLASS = 20


def imood(*args: object, capture: bool = False) -> str:
    """Run `imood ARGS...` as the command line would (in this process); its output, if captured."""
    from imood_cli.cli.app import main

    argv = [str(a) for a in args]
    print("$ imood " + " ".join(shlex.quote(a) for a in argv), flush=True)
    buffer = StringIO()
    try:
        with redirect_stdout(buffer) if capture else nullcontext():
            main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    if code:
        raise SystemExit(f"imood {argv[0]} failed (exit code {code})")
    return buffer.getvalue()


def write_image_folder(root: Path, ood_images: int) -> dict[str, Path]:
    """digits 0-5 as train/<class>/*.png (long-tailed) and test/<class>/*.png; digits 6-9 as ood/*.png."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)  # 8×8 grey, values 0..16
    paths = {"train": root / "train", "test": root / "test", "ood": root / "ood"}
    for k in range(ID_CLASSES):
        index = np.flatnonzero(digits.target == k)
        for split, chosen in (("train", index[:LONG_TAIL[k]]), ("test", index[-TEST_PER_CLASS:])):
            folder = paths[split] / f"digit{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray(pixels[i], "L").save(folder / f"{i}.png")
    paths["ood"].mkdir(parents=True, exist_ok=True)
    for i in np.flatnonzero(digits.target >= ID_CLASSES)[:ood_images]:
        Image.fromarray(pixels[i], "L").save(paths["ood"] / f"{i}.png")
    return paths


def build_model(weights: Path, train_dir: Path, epochs: int, seed: int = 0) -> None:
    """A timm ResNet18 for the ID classes, 1 input channel; `epochs` of plain cross-entropy training on the
    training folder first (images scaled to [0, 1] and normalized with mean 0.5, std 0.5, at 32 px)."""
    import numpy as np
    import timm
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model("resnet18", num_classes=ID_CLASSES, in_chans=1)
    if epochs:
        files = sorted(train_dir.glob("*/*.png"))
        x = torch.tensor(np.stack([np.asarray(Image.open(f).resize((32, 32), Image.BILINEAR)) for f in files]))
        x = (x.float()[:, None] / 255 - 0.5) / 0.5
        y = torch.tensor([int(f.parent.name.removeprefix("digit")) for f in files])
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        model.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(x)).split(32):
                opt.zero_grad()
                F.cross_entropy(model(x[batch]), y[batch]).backward()
                opt.step()
    save_file(model.state_dict(), weights)


def main(workdir: Path, epochs: int = 0, ood_images: int = 300, detectors: str = "all", batch_size: int = 512) -> dict:
    """The whole example; returns `imood eval --json` of ada_energy."""
    workdir = Path(workdir)
    data, runs = workdir / "data", workdir / "runs"
    folders = write_image_folder(workdir / "images", ood_images)
    imood("data", "prepare", "folder", "--name", "mydigits", "--drp", data, "--train", folders["train"],
          "--test", folders["test"], "--ood-dir", folders["ood"])
    weights = workdir / "resnet18-digits.safetensors"
    build_model(weights, folders["train"], epochs)
    run = runs / "resnet18-mydigits"
    imood("import-model", "--timm", "resnet18", "--weights", weights, "--in-chans", "1", "--mean", "0.5", "--std",
          "0.5", "--ds", "mydigits", "--drp", data, "--out", run, "--force")
    imood("score", run, "-m", detectors, "--device", "cpu", "--batch-size", batch_size)
    result = json.loads(imood("eval", run / "scores" / "ada_energy.safetensors", "--json", capture=True))
    mean, acc = result["ood"]["mean"], result["id"]
    print(f"ada_energy: AUROC {100 * mean['auroc']:.1f}, FPR95 {100 * mean['fpr95']:.1f}, ID accuracy "
          f"{100 * acc['acc']:.1f} (many-shot {100 * acc['many']:.1f}, few-shot {100 * acc['few']:.1f})")
    print(f"next: imood report {run}")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("own-model-example"))
    ap.add_argument("--epochs", type=int, default=0, help="train the model briefly first (plain cross-entropy)")
    ap.add_argument("--ood-images", type=int, default=300)
    args = ap.parse_args()
    main(args.workdir, args.epochs, args.ood_images)
