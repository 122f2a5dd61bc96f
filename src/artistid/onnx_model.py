"""`OnnxModel`: a model exported by `artistid export`, run by ONNX Runtime without PyTorch.

The graph takes what `artistid.images.load_image` returns, stacked: uint8 pixels, NHWC, (batch, size, size, 3) in RGB
order, and gives softmax probabilities (batch, classes). Normalization, backbone, head and temperature are inside
the graph; the model card (class names, preprocessing, refusal rules...: `artistid.card`) and how to feed the graph
are JSON in the ONNX file's `metadata_props` under the key "artistid", so any ONNX runtime in any language can use
the file. Answers are decided by `artistid.answers.decide`, as on every other surface.

This module imports neither torch nor onnx: serving an .onnx file needs only onnxruntime, numpy and Pillow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from artistid.answers import Answer
from artistid.card import ModelCard, card_from_dict
from artistid.errors import ModelFileError
from artistid.refusals import split_scores, stack_scores
from artistid.storage import file_sha256

__all__ = [
    "INPUT_NAME",
    "METADATA_KEY",
    "ONNX_FORMAT",
    "OTHER_SCORE_NAME",
    "OUTPUT_NAME",
    "PAINTING_SCORE_NAME",
    "OnnxModel",
]

ONNX_FORMAT = "artistid-onnx"
ONNX_FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
METADATA_KEY = "artistid"
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
PAINTING_SCORE_NAME = "painting_score"  # present when the model has a "not a painting" gate
OTHER_SCORE_NAME = "other_score"  # present when it was trained with --others


class OnnxModel:
    """Class probabilities for uint8 NHWC pixels, with the model card and metadata the export wrote."""

    def __init__(self, session: Any, metadata: dict[str, Any], *, path: str = "", sha256: str = "") -> None:
        self.session = session
        self.metadata = metadata
        self.path = path
        self.sha256 = sha256
        self.card: ModelCard = _card(metadata)
        self.classes_ = np.asarray(self.card.classes, dtype=object)
        self.preprocess = self.card.preprocess
        self.outputs = [output.name for output in session.get_outputs()]

    @classmethod
    def load(cls, path: str | Path, *, threads: int | None = None) -> OnnxModel:
        """Opens an .onnx file written by `artistid export`; raises ModelFileError if it is not one."""
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: ONNX model file not found")
        options = ort.SessionOptions()
        # Idle pool threads that spin would take the cores from the threads decoding the next requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"{path}: not a readable ONNX model ({first_line})") from None
        raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        try:
            metadata = json.loads(raw) if raw else {}
        except ValueError:
            metadata = {}
        if metadata.get("format") != ONNX_FORMAT:
            raise ModelFileError(f"{path}: not exported by `artistid export` (no artistid metadata in the ONNX file)")
        if metadata.get("version") not in READABLE_VERSIONS:
            raise ModelFileError(
                f"{path}: artistid ONNX format version {metadata.get('version')} is not supported "
                f"(this artistid reads versions {', '.join(map(str, READABLE_VERSIONS))}); export the model again"
            )
        try:
            return cls(session, metadata, path=str(path), sha256=file_sha256(path))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: artistid metadata is inconsistent ({type(exc).__name__}: {exc})") from None

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (n, classes) for uint8 pixels (n, size, size, 3)."""
        if len(pixels) == 0:
            return np.zeros((0, len(self.classes_)), dtype=np.float32)
        (probabilities,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixels, dtype=np.uint8)})
        return probabilities

    def scores_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities and the refusal scores the graph gives, stacked as `artistid.refusals.stack_scores` does."""
        if len(pixels) == 0:
            return np.zeros((0, len(self.classes_) + 2), dtype=np.float64)
        wanted = [name for name in (OUTPUT_NAME, PAINTING_SCORE_NAME, OTHER_SCORE_NAME) if name in self.outputs]
        ran = self.session.run(wanted, {INPUT_NAME: np.ascontiguousarray(pixels, dtype=np.uint8)})
        found = dict(zip(wanted, ran, strict=True))
        return stack_scores(found[OUTPUT_NAME], found.get(PAINTING_SCORE_NAME), found.get(OTHER_SCORE_NAME))

    def answer(self, pixels: np.ndarray, *, top_k: int = 1) -> list[Answer]:
        """What artistid says about each image, decided as on every other surface."""
        probabilities, painting_scores, other_scores = split_scores(self.scores_pixels(pixels))
        return self.card.decide(probabilities, top_k=top_k, painting_scores=painting_scores, other_scores=other_scores)


def _card(metadata: dict[str, Any]) -> ModelCard:
    if metadata.get("version") == 1:  # the card's sections at the top level, the threshold beside the temperature
        head = {"n_features": 0}  # not recorded: the graph holds the head
        calibration = {"temperature": metadata.get("temperature", 1.0), "threshold": metadata.get("threshold")}
        return card_from_dict({**metadata, "head": head, "calibration": calibration}, version=1)
    return card_from_dict(metadata["card"])
