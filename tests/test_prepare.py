"""prepare and check: near-duplicate groups, the largest copy kept, a leak-free split, leaks found; and the CLI."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
from conftest_storage import make_jpeg
from PIL import Image
from typer.testing import CliRunner

from artistid import storage
from artistid.cli import app
from artistid.errors import SourceError
from artistid.prepare import check_leaks, prepare

runner = CliRunner()


def _copy_of(data: bytes, scale: float, quality: int = 70) -> bytes:
    """Another 'scan' of the same painting: rescaled and recompressed."""
    image = Image.open(io.BytesIO(data))
    image = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _write(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def _visible(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def test_prepare_keeps_the_largest_copy_and_splits_without_leaks(tmp_path: Path) -> None:
    painting = make_jpeg(1, size=(480, 360))
    raw = tmp_path / "raw"
    files = {
        "Claude_Monet/water-lilies small.jpg": _copy_of(painting, 0.5),
        "Claude_Monet/water-lilies.jpg": painting,
        "Claude_Monet/water-lilies-2.jpg": _copy_of(painting, 0.8, quality=50),
        "Claude_Monet/broken.jpg": painting[:50],
        "Claude_Monet/notes.jpg": b"not an image at all",
    }
    files.update({f"Claude_Monet/other {i}.jpg": make_jpeg(10 + i) for i in range(5)})
    files.update({f"Vincent_van_Gogh/vg {i}.jpg": make_jpeg(20 + i) for i in range(5)})
    _write(raw, files)

    report = prepare(str(raw), tmp_path / "data", test_fraction=0.4, seed=3)
    assert (report.images, report.kept, report.duplicates_removed, report.groups_with_duplicates) == (15, 11, 2, 1)
    assert sorted(Path(u["path"]).name for u in report.unreadable) == ["broken.jpg", "notes.jpg"]
    (group,) = report.groups
    assert Path(group["kept"]).name == "water-lilies.jpg"
    assert sorted(Path(p).name for p in group["removed"]) == ["water-lilies small.jpg", "water-lilies-2.jpg"]
    assert report.per_class == {"Claude_Monet": {"train": 4, "test": 2}, "Vincent_van_Gogh": {"train": 3, "test": 2}}
    written = _visible(tmp_path / "data")
    assert "prepare-report.json" in written
    images = [name for name in written if name.endswith(".jpg")]
    assert len(images) == 11
    assert sum("water-lilies" in name for name in images) == 1
    kept = next(name for name in images if "water-lilies" in name)
    assert (tmp_path / "data" / kept).read_bytes() == painting
    assert check_leaks(str(tmp_path / "data")).leaks == 0

    with pytest.raises(SourceError, match="already holds files"):
        prepare(str(raw), tmp_path / "data")


def test_a_painting_under_two_artists_stays_in_train(tmp_path: Path) -> None:
    painting = make_jpeg(40, size=(400, 300))
    files = {"A/same.jpg": painting, "B/same again.jpg": _copy_of(painting, 0.7)}
    files.update({f"{artist}/{i}.jpg": make_jpeg(50 + 10 * n + i) for n, artist in enumerate("AB") for i in range(4)})
    _write(tmp_path / "raw", files)
    report = prepare(str(tmp_path / "raw"), tmp_path / "data", test_fraction=0.5)
    (conflict,) = report.cross_artist_copies
    assert {Path(conflict["a"]).name, Path(conflict["b"]).name} == {"same.jpg", "same again.jpg"}
    assert (tmp_path / "data/Train/A/same.jpg").is_file() and (tmp_path / "data/Train/B/same again.jpg").is_file()
    assert report.per_class == {"A": {"train": 3, "test": 2}, "B": {"train": 3, "test": 2}}
    assert check_leaks(str(tmp_path / "data")).leaks == 0


def test_prepare_refuses_a_map_file_and_a_dataset_already_split(tmp_path: Path) -> None:
    files = {f"{artist}/{i}.jpg": make_jpeg(60 + 10 * n + i) for n, artist in enumerate("AB") for i in range(3)}
    _write(tmp_path / "raw", files)
    (tmp_path / "raw.map").write_text("".join(f"raw/{name}\t{name[0]}\n" for name in files))
    with pytest.raises(SourceError, match=r"raw\.map: a file; prepare takes a folder of artist folders"):
        prepare(str(tmp_path / "raw.map"), tmp_path / "out")
    prepare(str(tmp_path / "raw"), tmp_path / "data")
    with pytest.raises(SourceError, match="already split into Train/ and Test/"):
        prepare(str(tmp_path / "data"), tmp_path / "again")
    assert not (tmp_path / "out").exists() and not (tmp_path / "again").exists()


def test_an_interrupted_prepare_leaves_no_dataset_behind(tmp_path: Path, monkeypatch) -> None:
    files = {f"{artist}/{i}.jpg": make_jpeg(80 + 10 * n + i) for n, artist in enumerate("AB") for i in range(5)}
    _write(tmp_path / "raw", files)
    writes = 0
    write_bytes_atomic = storage.write_bytes_atomic

    def interrupted_after_three(*args: object, **kwargs: object) -> None:
        nonlocal writes
        writes += 1
        if writes > 3:
            raise KeyboardInterrupt
        write_bytes_atomic(*args, **kwargs)

    monkeypatch.setattr(storage, "write_bytes_atomic", interrupted_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(tmp_path / "raw"), tmp_path / "data")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # no half dataset, no staging folder left over
    report = prepare(str(tmp_path / "raw"), tmp_path / "data")  # and the run can simply be made again
    assert report.kept == 10 and len(_visible(tmp_path / "data")) == 11


def test_check_finds_copies_across_train_and_test_of_any_artist(tmp_path: Path) -> None:
    monet, gogh = make_jpeg(1, size=(400, 300)), make_jpeg(2, size=(400, 300))
    _write(
        tmp_path,
        {
            "Train/Claude_Monet/a.jpg": monet,
            "Train/Claude_Monet/b.jpg": make_jpeg(3),
            "Train/Vincent_van_Gogh/c.jpg": gogh,
            "Test/Claude_Monet/a-rescan.jpg": _copy_of(monet, 0.6),
            "Test/Claude_Monet/d.jpg": make_jpeg(4),
            "Test/Pablo_Picasso/mislabelled.jpg": _copy_of(gogh, 0.9),
        },
    )
    (tmp_path / "Train/Pablo_Picasso").mkdir()
    (tmp_path / "Train/Pablo_Picasso/e.jpg").write_bytes(make_jpeg(5))
    result = runner.invoke(app, ["check", str(tmp_path), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["leaks"] == 2
    pairs = {(Path(p["train"]).name, Path(p["test"]).name) for p in report["pairs"]}
    assert pairs == {("a.jpg", "a-rescan.jpg"), ("c.jpg", "mislabelled.jpg")}
    assert all(p["phash"] <= 14 and p["dhash"] <= 16 for p in report["pairs"])

    (tmp_path / "Test/Claude_Monet/a-rescan.jpg").unlink()
    (tmp_path / "Test/Pablo_Picasso/mislabelled.jpg").unlink()
    clean = runner.invoke(app, ["check", str(tmp_path)])
    assert clean.exit_code == 0, clean.output
    assert "0 near-duplicate pairs across Train (4) and Test (1)" in clean.stdout


def test_check_reads_a_dataset_in_azure_blob(azurite, tmp_path: Path) -> None:
    container = f"leaky-{uuid.uuid4().hex[:8]}"
    painting = make_jpeg(7, size=(400, 300))
    for name, data in {
        "Train/A/x.jpg": painting,
        "Train/A/y.jpg": make_jpeg(8),
        "Test/A/x-copy.jpg": _copy_of(painting, 0.5),
        "Test/A/z.jpg": make_jpeg(9),
    }.items():
        storage.write_bytes_atomic(f"az://{container}/{name}", data, azurite.storage_options)
    report = check_leaks(f"az://{container}", azurite.storage_options)
    assert report.leaks == 1
    assert report.pairs[0]["train"].endswith("/Train/A/x.jpg")
    assert report.pairs[0]["test"].endswith("/Test/A/x-copy.jpg")


def test_prepare_the_real_raw_scrape_then_check_finds_no_leak(paintings3: Path, tmp_path: Path) -> None:
    """paintings3/raw holds several copies of many paintings (other scans, crops, sizes)."""
    raw = paintings3 / "raw"
    result = runner.invoke(app, ["prepare", str(raw), "--to", str(tmp_path / "data"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    sources = sorted(p for p in raw.rglob("*") if p.is_file())
    assert report["images"] == len(sources)
    # Measured: 758 files hold 453 paintings; over 250 of them come in more than one copy.
    assert report["duplicates_removed"] >= 250
    assert report["groups_with_duplicates"] >= 200
    assert report["kept"] == report["images"] - report["duplicates_removed"]
    assert set(report["per_class"]) == {"Claude_Monet", "Pablo_Picasso", "Vincent_van_Gogh"}
    for counts in report["per_class"].values():
        assert 0.15 <= counts["test"] / (counts["train"] + counts["test"]) <= 0.25
    written = [name for name in _visible(tmp_path / "data") if name.endswith((".jpg", ".JPG"))]
    assert len(written) == report["kept"]
    removed = {Path(p).name for group in report["groups"] for p in group["removed"]}
    assert not removed & {Path(name).name for name in written}

    checked = runner.invoke(app, ["check", str(tmp_path / "data"), "--json"])
    assert checked.exit_code == 0, checked.output
    leaks = json.loads(checked.stdout)
    assert (leaks["leaks"], leaks["pairs"]) == (0, [])
    assert (leaks["train"], leaks["test"]) == (
        sum(c["train"] for c in report["per_class"].values()),
        sum(c["test"] for c in report["per_class"].values()),
    )


def test_fetch_command_with_credentials_from_the_environment(azurite, tmp_path: Path, monkeypatch) -> None:
    container = f"cli-{uuid.uuid4().hex[:8]}"
    files = {"Train/A/one.jpg": make_jpeg(1), "Test/A/two words.jpg": make_jpeg(2)}
    for name, data in files.items():
        storage.write_bytes_atomic(f"az://{container}/{name}", data, azurite.storage_options)

    by_option = runner.invoke(
        app,
        ["fetch", f"az://{container}", "--to", str(tmp_path / "a"), "--json",
         "--storage-option", f"connection_string={azurite.connection_string}"],
    )  # fmt: skip
    assert by_option.exit_code == 0, by_option.output
    size = sum(map(len, files.values()))
    assert json.loads(by_option.stdout) == {"fetched": 2, "skipped": 0, "failed": [], "bytes_fetched": size}

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    by_env = runner.invoke(app, ["fetch", f"abfs://{container}", "--to", str(tmp_path / "a"), "-q",
                                 "--storage-option", "max_concurrency=2"])  # fmt: skip
    assert by_env.exit_code == 0, by_env.output
    assert "0 fetched (0.0 MB), 2 skipped (already complete), 0 failed" in by_env.stdout
    assert _visible(tmp_path / "a") == sorted(files)


def test_fetch_command_reports_a_bad_manifest_line_in_one_line(tmp_path: Path) -> None:
    manifest = tmp_path / "transferimages.txt"
    manifest.write_text("https://h/a.jpg Train/A a.jpg\nhttps://h/b.jpg ../../etc passwd\n")
    result = runner.invoke(app, ["fetch", str(manifest), "--to", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0
    assert "transferimages.txt:2: refused target '../../etc/passwd'" in result.stderr
    assert not (tmp_path / "out").exists()
