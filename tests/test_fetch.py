"""fetch: manifests and prefixes, Azure Blob (Azurite) and a faulty HTTP server, traversal, retries, resume."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest_storage import FaultyHTTPServer, make_jpeg

from artistid import storage
from artistid.errors import SourceError
from artistid.fetch import DEAD_STORE_FAILURES, fetch, parse_manifest, safe_target

FAST = storage.RetryPolicy(attempts=4, base_delay=0.05, max_delay=0.2)


def _visible_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def _upload(azurite, container: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        storage.write_bytes_atomic(f"az://{container}/{name}", data, azurite.storage_options)


# ---------------------------------------------------------------------------------------------- manifests


def test_manifest_lines_with_spaces_comments_and_relative_uris() -> None:
    text = (
        "# URI DIR FILENAME\n"
        "\n"
        "https://example.org/a/monet%201.jpg Train/Claude_Monet Water Lilies (1906).jpg\n"
        "images/b.jpg  Test/Vincent_van_Gogh   b.jpg\r\n"
    )
    items = parse_manifest(text, "az://container/lists/transferimages.txt")
    assert [(i.uri, i.target, i.origin) for i in items] == [
        (
            "https://example.org/a/monet%201.jpg",
            "Train/Claude_Monet/Water Lilies (1906).jpg",
            "az://container/lists/transferimages.txt:3",
        ),
        (
            "az://container/lists/images/b.jpg",
            "Test/Vincent_van_Gogh/b.jpg",
            "az://container/lists/transferimages.txt:4",
        ),
    ]


def test_malformed_manifest_lines_are_reported_with_their_numbers() -> None:
    with pytest.raises(SourceError, match=r"m\.txt:2: expected 'URI DIR FILENAME'.*\(and 1 more bad lines\)"):
        parse_manifest("http://h/a.jpg Train/A a.jpg\nhttp://h/b.jpg Train/B\nonly-one-field\n", "m.txt")
    with pytest.raises(SourceError, match=r"m\.txt:2: same target 'Train/A/a.jpg' as line 1"):
        parse_manifest("http://h/a.jpg Train/A a.jpg\nhttp://h/c.jpg Train/A/ a.jpg\n", "m.txt")
    with pytest.raises(SourceError, match=r"m\.txt:2: same target 'Train/A/A.JPG' as line 1"):
        parse_manifest("http://h/a.jpg Train/A a.jpg\nhttp://h/c.jpg Train/A A.JPG\n", "m.txt")
    with pytest.raises(SourceError, match=r"m\.txt:2: its folder is line 1's file 'Train/A/a.jpg'"):
        parse_manifest("http://h/a.jpg Train/A a.jpg\nhttp://h/c.jpg Train/A/a.jpg b.jpg\n", "m.txt")
    with pytest.raises(SourceError, match="lists no files"):
        parse_manifest("# nothing\n\n", "m.txt")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("http://h/x.jpg ../outside x.jpg", "'..' in path"),
        ("http://h/x.jpg Train/A ../../../x.jpg", "'..' in path"),
        ("http://h/x.jpg /etc x.jpg", "absolute path"),
        ("http://h/x.jpg Train\\..\\.. x.jpg", "'..' in path"),
        ("http://h/x.jpg C:/Windows x.jpg", "absolute path"),
    ],
)
def test_manifest_targets_outside_the_folder_are_refused(tmp_path: Path, line: str, reason: str) -> None:
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"http://h/ok.jpg Train/A ok.jpg\n{line}\n")
    destination = tmp_path / "data"
    with pytest.raises(SourceError, match=rf"list\.txt:2: refused target .*{reason}"):
        fetch(str(manifest), destination, progress=False)
    assert not destination.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.txt"]


def test_a_symlink_on_the_way_is_refused(tmp_path: Path, http_server: FaultyHTTPServer) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    destination = tmp_path / "data"
    (destination / "Train").mkdir(parents=True)
    (destination / "Train" / "Claude_Monet").symlink_to(outside, target_is_directory=True)
    http_server.files["a.jpg"] = make_jpeg(1)
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{http_server.url('a.jpg')} Train/Claude_Monet a.jpg\n")
    with pytest.raises(SourceError, match=r"list\.txt:1: refused target .*symlink on the way"):
        fetch(str(manifest), destination, progress=False)
    assert list(outside.iterdir()) == []
    with pytest.raises(SourceError, match="symlink"):
        safe_target(destination, "Train/Claude_Monet/a.jpg", "x")


# ---------------------------------------------------------------------------------------------- Azure Blob


def test_fetch_a_prefix_from_azure_blob_and_skip_what_is_complete(azurite, tmp_path: Path) -> None:
    container = f"paintings-{uuid.uuid4().hex[:8]}"
    files = {f"Train/Claude_Monet/monet {i}.jpg": make_jpeg(i) for i in range(6)}
    files.update({f"Test/Vincent_van_Gogh/vg_{i}.jpg": make_jpeg(100 + i) for i in range(3)})
    _upload(azurite, container, files)
    destination = tmp_path / "data"

    report = fetch(f"az://{container}", destination, workers=4, storage_options=azurite.storage_options,
                   progress=False)  # fmt: skip
    assert (len(report.fetched), len(report.skipped), report.failed) == (9, 0, [])
    assert report.bytes_fetched == sum(map(len, files.values()))
    assert _visible_files(destination) == files

    again = fetch(f"az://{container}", destination, storage_options=azurite.storage_options, progress=False)
    assert (len(again.fetched), len(again.skipped)) == (0, 9)

    # A truncated copy (wrong size) and a corrupted one (same size, other bytes: the blob's MD5 catches it).
    (destination / "Train/Claude_Monet/monet 0.jpg").write_bytes(files["Train/Claude_Monet/monet 0.jpg"][:100])
    corrupted = bytearray(files["Test/Vincent_van_Gogh/vg_1.jpg"])
    corrupted[-10] ^= 0xFF
    (destination / "Test/Vincent_van_Gogh/vg_1.jpg").write_bytes(bytes(corrupted))
    repaired = fetch(f"az://{container}", destination, storage_options=azurite.storage_options, progress=False)
    assert sorted(repaired.fetched) == ["Test/Vincent_van_Gogh/vg_1.jpg", "Train/Claude_Monet/monet 0.jpg"]
    assert _visible_files(destination) == files


def test_fetch_a_manifest_stored_in_azure_blob(azurite, tmp_path: Path) -> None:
    """The reference layout: a manifest in the store whose lines point at blobs, filenames with spaces."""
    container = f"datasets-{uuid.uuid4().hex[:8]}"
    blobs = {f"Image/DataSets/Paintings/raw/{i}.jpg": make_jpeg(200 + i) for i in range(4)}
    _upload(azurite, container, blobs)
    lines = [
        f"az://{container}/Image/DataSets/Paintings/raw/0.jpg Train/Claude_Monet Impression, Sunrise.jpg",
        f"az://{container}/Image/DataSets/Paintings/raw/1.jpg Train/Pablo_Picasso Guernica study.jpg",
        "raw/2.jpg Test/Claude_Monet water lilies.jpg",  # relative to the manifest
        f"az://{container}/Image/DataSets/Paintings/raw/3.jpg Test/Pablo_Picasso plain.jpg",
    ]
    manifest = f"az://{container}/Image/DataSets/Paintings/transferimages.txt"
    storage.write_bytes_atomic(manifest, ("\n".join(lines) + "\n").encode(), azurite.storage_options)
    report = fetch(manifest, tmp_path, workers=2, storage_options=azurite.storage_options, progress=False)
    assert (len(report.fetched), report.failed) == (4, [])
    assert (tmp_path / "Train/Claude_Monet/Impression, Sunrise.jpg").read_bytes() == blobs[
        "Image/DataSets/Paintings/raw/0.jpg"
    ]
    assert (tmp_path / "Test/Claude_Monet/water lilies.jpg").read_bytes() == blobs["Image/DataSets/Paintings/raw/2.jpg"]


# ---------------------------------------------------------------------------------------------- HTTP faults


def _manifest_for(server: FaultyHTTPServer, tmp_path: Path, count: int) -> tuple[Path, dict[str, bytes]]:
    expected: dict[str, bytes] = {}
    lines = []
    for i in range(count):
        data = make_jpeg(300 + i, size=(400, 300))
        server.files[f"img/{i}.jpg"] = data
        expected[f"Train/A/painting {i}.jpg"] = data
        lines.append(f"{server.url(f'img/{i}.jpg')} Train/A painting {i}.jpg")
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, expected


def test_a_file_already_there_is_fetched_again_when_the_server_gives_no_size(
    http_server: FaultyHTTPServer, tmp_path: Path
) -> None:
    manifest, expected = _manifest_for(http_server, tmp_path, 2)
    http_server.send_length = False
    cut_short = tmp_path / "data" / "Train/A/painting 0.jpg"
    cut_short.parent.mkdir(parents=True)
    cut_short.write_bytes(expected["Train/A/painting 0.jpg"][:1000])  # left by an earlier, broken copy
    report = fetch(str(manifest), tmp_path / "data", workers=2, progress=False)
    assert (sorted(report.fetched), report.skipped, report.failed) == (sorted(expected), [], [])
    for name, data in expected.items():
        assert (tmp_path / "data" / name).read_bytes() == data


def test_transient_http_faults_are_retried_until_every_file_is_whole(
    http_server: FaultyHTTPServer, tmp_path: Path
) -> None:
    manifest, expected = _manifest_for(http_server, tmp_path, 6)
    http_server.stall_seconds = 3.0
    http_server.faults = {
        "img/0.jpg": ["500", "500"],
        "img/1.jpg": ["reset"],
        "img/2.jpg": ["reset", "500", "reset"],
        "img/3.jpg": ["stall"],
        "img/4.jpg": ["slow"],
    }
    destination = tmp_path / "data"
    # Room for a spare retry or two: a loaded CI machine may be slow to answer even without a fault.
    patient = storage.RetryPolicy(attempts=7, base_delay=0.05, max_delay=0.2)
    report = fetch(str(manifest), destination, workers=3, retry=patient, timeout=1.0, progress=False)
    assert (len(report.fetched), report.failed) == (6, [])
    assert _visible_files(destination) == expected
    assert http_server.requests[("GET", "img/0.jpg")] >= 3
    assert http_server.requests[("GET", "img/2.jpg")] >= 4
    assert http_server.requests[("GET", "img/3.jpg")] >= 2
    assert not list(destination.rglob(".*.part"))

    # A re-run asks the server for each file's size (HEAD) to judge the local copies; a failing HEAD is survived.
    (destination / "Train/A/painting 5.jpg").write_bytes(expected["Train/A/painting 5.jpg"][:-1])
    http_server.faults = {"img/5.jpg": ["HEAD:500"]}
    rerun = fetch(str(manifest), destination, retry=patient, timeout=1.0, progress=False)
    assert (rerun.fetched, len(rerun.skipped), rerun.failed) == (["Train/A/painting 5.jpg"], 5, [])
    assert _visible_files(destination) == expected
    assert all(http_server.requests[("HEAD", f"img/{i}.jpg")] >= 1 for i in range(6))


def test_persistent_and_permanent_failures_are_reported_not_raised(
    http_server: FaultyHTTPServer, tmp_path: Path
) -> None:
    manifest, _ = _manifest_for(http_server, tmp_path, 3)
    http_server.faults = {"img/1.jpg": ["500"] * 10}
    del http_server.files["img/2.jpg"]  # a 404: no point retrying
    destination = tmp_path / "data"
    report = fetch(str(manifest), destination, retry=FAST, progress=False)
    assert report.fetched == ["Train/A/painting 0.jpg"]
    assert [name for name, _ in report.failed] == ["Train/A/painting 1.jpg", "Train/A/painting 2.jpg"]
    assert "img/1.jpg" in report.failed[0][1]
    assert http_server.requests[("GET", "img/1.jpg")] == FAST.attempts
    assert http_server.requests[("GET", "img/2.jpg")] + http_server.requests[("HEAD", "img/2.jpg")] <= 2
    assert sorted(_visible_files(destination)) == ["Train/A/painting 0.jpg"]
    assert not list(destination.rglob(".*.part"))


def test_a_store_that_is_down_is_given_up_on_after_a_run_of_failures(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nothing listens on: every connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("".join(f"http://127.0.0.1:{port}/{i}.jpg Train/A {i}.jpg\n" for i in range(100)))
    report = fetch(str(manifest), tmp_path / "data", workers=2, retry=FAST, progress=False)
    assert (report.fetched, report.skipped, len(report.failed)) == ([], [], 100)
    not_tried = [reason for _, reason in report.failed if "not tried" in reason]
    assert len(not_tried) >= 100 - DEAD_STORE_FAILURES - 2  # at most one more in flight per worker
    assert "the last 16 files failed in a row; the store looks down" in not_tried[0]


def test_an_interrupted_fetch_leaves_no_half_file_and_a_rerun_completes_it(
    http_server: FaultyHTTPServer, tmp_path: Path
) -> None:
    manifest, expected = _manifest_for(http_server, tmp_path, 8)
    hanging = {"img/5.jpg", "img/6.jpg", "img/7.jpg"}
    http_server.faults = {path: ["hang"] for path in hanging}
    destination = tmp_path / "data"
    code = "import sys; from artistid.fetch import fetch; fetch(sys.argv[1], sys.argv[2], workers=8, progress=False)"
    process = subprocess.Popen([sys.executable, "-c", code, str(manifest), str(destination)])
    try:
        deadline = time.monotonic() + 60
        # Wait until the 5 healthy files are complete and the 3 others are stuck half-way through their bodies.
        while time.monotonic() < deadline:
            started = sum(http_server.requests[("GET", p)] for p in hanging)
            if len(_visible_files(destination) if destination.exists() else {}) == 5 and started == 3:
                break
            assert process.poll() is None, "the fetch ended before it could be interrupted"
            time.sleep(0.05)
        else:
            pytest.fail("the fetch did not reach the interrupted state in time")
        time.sleep(0.3)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    partial = _visible_files(destination)
    assert len(partial) == 5
    assert all(expected[name] == data for name, data in partial.items())  # every visible file is whole

    report = fetch(str(manifest), destination, progress=False)
    assert (len(report.fetched), len(report.skipped), report.failed) == (3, 5, [])
    assert _visible_files(destination) == expected
    assert not [p for p in destination.rglob("*") if p.name.endswith(".part")]


def test_fetch_from_a_local_folder_and_a_file_uri(tmp_path: Path) -> None:
    source = tmp_path / "source"
    files = {"Train/A/1.jpg": make_jpeg(1), "Test/A/2 two.jpg": make_jpeg(2), ".hidden/x.jpg": b"skip me"}
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    report = fetch(f"file://{source}", tmp_path / "a", progress=False)
    assert sorted(report.fetched) == ["Test/A/2 two.jpg", "Train/A/1.jpg"]
    assert _visible_files(tmp_path / "a") == {k: v for k, v in files.items() if not k.startswith(".")}
    manifest = tmp_path / "list.txt"
    manifest.write_text("source/Train/A/1.jpg Train/B one.jpg\n")  # relative to the manifest
    assert fetch(str(manifest), tmp_path / "b", progress=False).fetched == ["Train/B/one.jpg"]
    assert (tmp_path / "b/Train/B/one.jpg").read_bytes() == files["Train/A/1.jpg"]
    with pytest.raises(SourceError, match="no such manifest file or storage prefix"):
        fetch(str(tmp_path / "missing"), tmp_path / "c", progress=False)
