"""Writes notebooks/paintings.ipynb (outputs stripped) from the cells below; run after editing them."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    (
        "md",
        """# Which painter made this painting?

The reference lab, with artistid's Python API: get the images, prepare leak-free Train/Test folders, train a
dense layer on a frozen ImageNet backbone with the reference recipe (7 epochs, minibatch 50, learning rate 0.2,
momentum 0.9, L2 0.0005), evaluate it honestly, name the artist of a few paintings, and export the model.

By default it runs on the small public-domain demo set that ships with artistid. Set `ARTISTID_DATA` to a dataset
folder (`Train/<artist>/...`, `Test/<artist>/...`) or a storage URI (`az://...`, `s3://...`) to use your own.""",
    ),
    (
        "code",
        """import os
import tempfile
from importlib.resources import files
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Image, display

import artistid
from artistid.datasets import load_dataset
from artistid.features import FeatureCache

SOURCE = os.environ.get("ARTISTID_DATA") or str(files("artistid") / "demo_data")
WORK = Path(tempfile.mkdtemp(prefix="artistid-notebook-"))
print("images from", SOURCE)""",
    ),
    (
        "md",
        """## 1. Fetch the images
`fetch` copies a manifest's files or a storage prefix into a local folder: in parallel, retried on transient
errors, each file renamed into place only when complete, so a re-run skips what is already there.""",
    ),
    (
        "code",
        """from artistid.fetch import fetch

report = fetch(SOURCE, WORK / "fetched", workers=4)
print(report.summary())""",
    ),
    (
        "md",
        """## 2. Prepare a leak-free split
Scraped images hold copies of the same painting (other scans, crops, sizes). `prepare` groups near-duplicates by
perceptual hash within each artist, keeps the largest of each group, and splits Train/Test by group, so no painting
lands on both sides. `check_leaks` confirms it.""",
    ),
    (
        "code",
        """from artistid.prepare import check_leaks, prepare

raw = WORK / "fetched" / "Train"  # a folder of artist folders, as a scrape would give
prepared = prepare(str(raw), WORK / "dataset", test_fraction=0.2, seed=0)
print(prepared.summary())
print("near-duplicates crossing Train and Test:", check_leaks(str(WORK / "dataset")).leaks)""",
    ),
    (
        "md",
        """## 3. Train: the default recipe, and the reference design's
The backbone is frozen, so features are computed once (and cached), on the fastest runtime measured on this machine
(`result.model.extractor.runtime`). The default ("standard") recipe adds the channel statistics of the network's
blocks to its pooled features (a painting's "style") and fits a logistic regression by L-BFGS; `preset("reference")`
is the reference design's recipe: pooled features and a dense layer trained by SGD for 7 epochs. Both train on the
prepared Train folder and keep its Test folder for evaluation.""",
    ),
    (
        "code",
        """from artistid.evaluate import evaluate
from artistid.train import preset, train

dataset = load_dataset(str(WORK / "dataset"))
cache = FeatureCache(WORK / "cache")
reference = train(dataset.train, preset("reference"), cache=cache)
for record in reference.history:
    print(f"reference, epoch {record['epoch']}: loss {record['loss']:.4f}, training error {record['train_error']:.1%}")
result = train(dataset.train, cache=cache)  # the defaults: preset("standard")
fit = result.history[0]
print(f"standard: L-BFGS, {fit['iterations']} iterations, training error {fit['train_error']:.1%}")
for name, trained in (("reference", reference), ("standard", result)):
    accuracy = evaluate(trained.model, dataset.test, cache=cache, progress=False).metrics["accuracy"]
    print(f"{name}: accuracy {accuracy:.1%} on Test, backbone on {trained.model.extractor.runtime}")
model = result.model""",
    ),
    ("md", "## 4. Evaluate on the test folder"),
    (
        "code",
        """from artistid.evaluate import evaluate, format_report, write_report

evaluation = evaluate(model, dataset.test, cache=cache)
print(format_report(evaluation))
paths = write_report(evaluation, WORK / "report")
display(Image(filename=paths["confusion"]))""",
    ),
    ("md", "## 5. Save the model file and name the artist of a few paintings"),
    (
        "code",
        """from dataclasses import replace

model.card = replace(model.card, metrics=evaluation.card_metrics())  # the model card records the test metrics
model.save(WORK / "paintings.safetensors")
loaded = artistid.Model.load(WORK / "paintings.safetensors")

examples = [s.path for s in dataset.test[:: max(1, len(dataset.test) // 4)]][:4]
answers = loaded.answer(examples)  # the artist, or "unknown", as every surface says it
figure, axes = plt.subplots(1, len(examples), figsize=(4 * len(examples), 4))
for axis, path, answer in zip(axes, examples, answers):
    axis.imshow(plt.imread(path))
    axis.set_title(f"{answer.artist} ({answer.probability:.0%})\\nfile: {Path(path).parent.name}", fontsize=9)
    axis.axis("off")
plt.show()""",
    ),
    (
        "md",
        """## 6. Export for deployment
The ONNX file holds the whole pipeline (preprocessed image to probabilities); the export checks that ONNX Runtime
and PyTorch agree before it writes anything. `artistid serve paintings.onnx` serves it without PyTorch.""",
    ),
    (
        "code",
        """from artistid.export import export_onnx

exported = export_onnx(loaded, WORK / "paintings.onnx")
print(f"wrote {exported.path}; ONNX Runtime vs PyTorch: max difference {exported.max_abs_diff:.2e}")""",
    ),
]


def main() -> None:
    notebook = new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [new_markdown_cell(text) if kind == "md" else new_code_cell(text) for kind, text in CELLS]
    target = Path(__file__).resolve().parents[1] / "notebooks" / "paintings.ipynb"
    nbformat.write(notebook, target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
