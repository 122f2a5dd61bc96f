"""The CLI types its defaults out (importing the service or the fine-tuner would slow every command): they must be
the library's own, so a command and the Python API behave alike."""

from __future__ import annotations

import inspect
from dataclasses import fields

from artistid import cli, export, fetch, serve
from artistid.finetune import FinetuneSettings


def _defaults(command: object) -> dict[str, object]:
    return {name: p.default for name, p in inspect.signature(command).parameters.items()}  # type: ignore[arg-type]


def test_serve_fetch_and_export_options_default_to_the_library_s_values() -> None:
    options = _defaults(cli.serve)
    assert options["max_upload_mb"] == serve.DEFAULT_MAX_UPLOAD_MB
    assert options["max_batch"] == serve.DEFAULT_MAX_BATCH
    assert options["max_queue"] == serve.DEFAULT_MAX_QUEUE
    assert options["request_timeout"] == serve.DEFAULT_REQUEST_SECONDS
    assert _defaults(cli.fetch)["workers"] == fetch.DEFAULT_WORKERS
    assert _defaults(cli.export)["tolerance"] == export.TOLERANCE


def test_finetune_options_default_to_the_settings_defaults() -> None:
    options = _defaults(cli.finetune)
    shared = [f for f in fields(FinetuneSettings) if f.name in options and f.name != "weights"]
    assert len(shared) >= 10
    for field in shared:
        assert options[field.name] == field.default, field.name
