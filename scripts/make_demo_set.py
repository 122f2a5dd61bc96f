"""Builds src/artistid/demo_data from ../shared/datasets/paintings10: public-domain painters only.

Copies (downscaled to at most 256 px, JPEG quality 88) a fixed, seeded selection per artist and keeps the source's
provenance rows beside it. Run once by a developer; the result is committed.
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

from PIL import Image

ARTISTS = ("Claude_Monet", "Vincent_van_Gogh", "Rembrandt")  # all died before 1956
PER_SPLIT = {"Train": 80, "Test": 20}


def main(datasets: Path, target: Path) -> None:
    with open(datasets / "PROVENANCE.tsv") as handle:
        provenance = {row["path"]: row for row in csv.DictReader(handle, delimiter="\t")}
    rows = []
    rng = random.Random(2018)
    for split, count in PER_SPLIT.items():
        for artist in ARTISTS:
            files = sorted((datasets / "paintings10" / split / artist).glob("*.jpg"))
            out_dir = target / split / artist
            out_dir.mkdir(parents=True, exist_ok=True)
            for source in rng.sample(files, count):
                image = Image.open(source).convert("RGB")
                image.thumbnail((256, 256), Image.Resampling.LANCZOS)
                image.save(out_dir / source.name, quality=88)
                row = dict(provenance[str(source.relative_to(datasets))])
                row["path"] = f"{split}/{artist}/{source.name}"
                row["note"] = "downscaled to at most 256 px"
                rows.append(row)
    with open(target / "PROVENANCE.tsv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
