"""`explain report`: an offline HTML page of a run, built from its manifests.

The page is report.html plus report_files/ (its script and style, copied from the package, and
thumbnails), so OUT_DIR can be opened from disk, served by any static server, or zipped and mailed.
Python gathers the data (one entry per image) and embeds it once, as JSON; the page's script does the
rest: cards, filters, sorting, the confusion matrix, the large view, the view kept in the URL.
Pillow and numpy only: building a report never imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageOps

from explain_cli.inputs import sources as inputs
from explain_cli.io import files as output

PAGE = "report.html"
FILES = "report_files"
THUMBS = "thumbs"
THUMB_SIZE = 256
ASSETS = ("report.js", "report.css")


@dataclass
class Card:
    """What the page shows of one image."""

    image: str
    source: str | None = None
    thumb: str | None = None  # relative to OUT_DIR
    predictions: list = field(default_factory=list)  # [class_index, label, probability], most probable first
    entropy: float | None = None
    truth: int | list | None = None  # several labels per image: the list of true labels
    truth_label: str | list | None = None
    correct: bool | None = None  # several labels per image: the labels predicted are exactly the true ones
    labels: list | None = None  # several labels per image: [class_index, label, probability] of those predicted
    segmentation: str | None = None  # a segmentation: the picture of its classes over the image (relative to OUT_DIR)
    segmentation_thumb: str | None = None
    detections: str | None = None  # a detector: the picture of its boxes over the image (relative to OUT_DIR)
    detections_thumb: str | None = None
    boxes: list = field(default_factory=list)  # ... and each box: [k, class_index, label, score, [x0, y0, x1, y1]]
    explanations: list = field(default_factory=list)
    evaluation: list = field(default_factory=list)

    def as_data(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "source"}


def manifests(out_dir: Path) -> list[Path]:
    """Every manifest*.jsonl and evaluation*.jsonl in the folder (a sharded run writes one per shard)."""
    return sorted(p for pattern in ("manifest*.jsonl", "evaluation*.jsonl") for p in out_dir.glob(pattern)
                  if p.is_file())


def cards(out_dir: Path) -> list[Card]:
    """One card per image in the manifests (in the order first seen), with its explanations and evaluation."""
    by_image: dict[str, Card] = {}
    for record in output.read_records(out_dir):
        image = record.get("image")
        if not isinstance(image, str) or record.get("method") in ("activations", "classviz"):
            continue
        card = by_image.setdefault(image, Card(image))
        _take_image_fields(card, record)
        overlay = record.get("overlay")
        if overlay and (out_dir / overlay).is_file():
            card.explanations.append({
                "method": record.get("method"), "class_index": record.get("class_index"),
                "label": record.get("label"), "score": record.get("score"), "layer": record.get("layer"),
                "rank": record.get("rank"), "overlay": overlay, "thumb": None, "detection": record.get("detection"),
                "video": record.get("video"),  # a clip's overlay video, played in the large view
            })
        box = [record.get(key) for key in ("detection", "class_index", "label", "score", "box")]
        if record.get("box") is not None and box not in card.boxes:  # each method of a run repeats the box
            card.boxes.append(box)
    for record in output.read_records(out_dir, output.EVALUATION):
        image = record.get("image")
        if isinstance(image, str):
            card = by_image.setdefault(image, Card(image))
            _take_image_fields(card, record)
            card.evaluation.append({key: record.get(key) for key in (
                "method", "class_index", "label", "detection", "deletion_auc", "insertion_auc", "average_drop",
                "increase_in_confidence", "pointing_hit", "energy_in_box")})
    return list(by_image.values())


def _take_image_fields(card: Card, record: dict) -> None:
    if record.get("source") and card.source is None:
        card.source = record["source"]
    if record.get("predictions") and not card.predictions:
        card.predictions = record["predictions"]
    if record.get("entropy") is not None and card.entropy is None:
        card.entropy = record["entropy"]
    if record.get("predicted_labels") is not None and card.labels is None:
        card.labels = record["predicted_labels"]
    if record.get("segmentation") and card.segmentation is None:
        card.segmentation = record["segmentation"]
    if isinstance(record.get("detections"), str) and card.detections is None:
        card.detections = record["detections"]
    if record.get("truth") is not None and card.truth is None:
        card.truth = record["truth"]
        card.truth_label = record.get("truth_label")
        card.correct = record.get("correct")
        if card.correct is None and card.predictions:
            card.correct = card.predictions[0][0] == card.truth


def build(out_dir: Path, sheet: int = 0, workers: int | None = None) -> Path:
    """Write OUT_DIR/report.html and report_files/ (and sheet.png with `sheet` > 0); return the page's path."""
    found = cards(out_dir)
    files = out_dir / FILES
    (files / THUMBS).mkdir(parents=True, exist_ok=True)
    _make_thumbnails(out_dir, found, workers)
    labels = _display_names(found)
    _name_classes(found, labels)
    for asset in ASSETS:
        output.write_atomic(files / asset, resources.files("explain_cli").joinpath(f"report_assets/{asset}").read_bytes())
    template = resources.files("explain_cli").joinpath("report_assets/report.html").read_text("utf-8")
    data = {"title": out_dir.resolve().name, "cards": [c.as_data() for c in found],
            "labels": {str(k): v for k, v in sorted(labels.items())}}
    page = template.replace("{{TITLE}}", _html(f"explain report: {out_dir.resolve().name}")).replace(
        "{{DATA}}", embed_json(data))
    path = out_dir / PAGE
    output.write_atomic(path, page.encode("utf-8"))
    if sheet:
        from explain_cli.render import heatmaps as render

        output.write_atomic(out_dir / "sheet.png", render.contact_sheet(_sheet_entries(out_dir, found, sheet)))
    return path


def embed_json(data: Any) -> str:
    """JSON safe inside <script>: no "</" can close the element, no "<!--" can open a comment."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _display_names(found: Sequence[Card]) -> dict[int, str]:
    """Each class on the page by its label (a prediction's, an explanation's, a truth's), with its number where two
    classes share a label (ImageNet's two "crane"s) and as its number where no record names it."""
    labels: dict[int, str] = {}
    for card in found:
        named = [(i, label) for i, label, _ in card.predictions + (card.labels or [])]
        named += [(e["class_index"], e["label"]) for e in card.explanations + card.evaluation]
        named += list(zip(_listed(card.truth), _listed(card.truth_label)))
        for class_index, label in named:
            if class_index is not None and label:
                labels.setdefault(int(class_index), label)
        for class_index in _listed(card.truth):
            labels.setdefault(int(class_index), str(class_index))
    uses = Counter(labels.values())
    return {i: label if uses[label] == 1 else f"{label} ({i})" for i, label in labels.items()}


def _name_classes(found: Sequence[Card], labels: dict[int, str]) -> None:
    """Every class of every card shown by its display name."""
    for card in found:
        card.predictions = [[i, labels.get(int(i), label), p] for i, label, p in card.predictions]
        if card.labels is not None:
            card.labels = [[i, labels.get(int(i), label), p] for i, label, p in card.labels]
        for row in card.explanations + card.evaluation:
            if row.get("class_index") is not None:
                row["label"] = labels.get(int(row["class_index"]), row["label"])
        if isinstance(card.truth, list):
            card.truth_label = [labels[int(c)] for c in card.truth]
        elif card.truth is not None:
            card.truth_label = labels[int(card.truth)]


def _listed(value: Any) -> list:
    """A value or a list of them (several labels per image), as a list; None as none."""
    return value if isinstance(value, list) else [] if value is None else [value]


def _make_thumbnails(out_dir: Path, found: Sequence[Card], workers: int | None) -> None:
    """A thumbnail for each card's original (else its first overlay) and for each overlay; kept across builds
    (named after the file's path, size and time), so the next build only makes the new ones."""
    jobs: list[tuple[Path, Any, str]] = []
    for card in found:
        original = Path(card.source) if card.source else None
        if original is None or not original.is_file():
            original = out_dir / card.explanations[0]["overlay"] if card.explanations else None
        if original is not None:
            jobs.append((original, card, "thumb"))
        if card.segmentation:
            jobs.append((out_dir / card.segmentation, card, "segmentation_thumb"))
        if card.detections:
            jobs.append((out_dir / card.detections, card, "detections_thumb"))
        for explanation in card.explanations:
            jobs.append((out_dir / explanation["overlay"], explanation, "thumb"))
    keep: set[str] = set()

    def make(job: tuple[Path, Any, str]) -> None:
        source, target, key = job
        name = _thumb_name(source, out_dir)
        if name is None:
            return
        path = out_dir / FILES / THUMBS / name
        if not path.is_file():
            try:
                output.write_atomic(path, thumbnail(source))
            except (OSError, ValueError, Image.DecompressionBombError):
                if isinstance(target, Card) and key == "thumb" and target.explanations and \
                        source != out_dir / target.explanations[0]["overlay"]:  # a volume, a video: its montage
                    make((out_dir / target.explanations[0]["overlay"], target, key))
                return  # an unreadable original: the card shows no picture, the page still works
        relative = f"{FILES}/{THUMBS}/{name}"
        keep.add(name)
        if isinstance(target, Card):
            setattr(target, key, relative)
        else:
            target[key] = relative

    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) + 2)) as pool:
        list(pool.map(make, jobs))
    for stale in (out_dir / FILES / THUMBS).glob("*.jpg"):  # thumbnails of files no longer reported
        if stale.name not in keep:
            stale.unlink(missing_ok=True)


def _thumb_name(path: Path, out_dir: Path) -> str | None:
    """The thumbnail's name: a hash of the file's place (relative to OUT_DIR when inside it, so a copied or
    moved folder keeps its thumbnails), size and modification time."""
    try:
        stat = path.stat()
        place = path.resolve()
        place = place.relative_to(out_dir.resolve()) if place.is_relative_to(out_dir.resolve()) else place
    except OSError:
        return None
    key = f"{place}\0{stat.st_size}\0{stat.st_mtime_ns}".encode("utf-8", "surrogateescape")
    return hashlib.sha1(key).hexdigest()[:20] + ".jpg"


def thumbnail(path: Path, size: int = THUMB_SIZE) -> bytes:
    """A JPEG of at most size × size; a JPEG is decoded at a reduced scale (draft mode), not in full."""
    with inputs.pixel_limit(inputs.DEFAULT_MAX_PIXELS), Image.open(path) as image:
        image.draft("RGB", (size, size))
        picture = ImageOps.exif_transpose(image).convert("RGB")
        picture.thumbnail((size, size), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()


def _sheet_entries(out_dir: Path, found: Sequence[Card], count: int) -> list[tuple[Path | None, str, bool | None]]:
    """(picture, title, correct) for the contact sheet: wrong ones first when truth is known."""
    ordered = sorted(found, key=lambda c: {False: 0, None: 1, True: 2}[c.correct])[:count]
    entries = []
    for card in ordered:
        picture = out_dir / card.explanations[0]["overlay"] if card.explanations else (
            Path(card.source) if card.source else None)
        predicted = f"{card.predictions[0][1]} {card.predictions[0][2]:.0%}" if card.predictions else "?"
        truth = ", ".join(card.truth_label) if isinstance(card.truth_label, list) else card.truth_label
        title = predicted if card.truth is None else f"{predicted} (truth: {truth})"
        entries.append((picture, title, card.correct))
    return entries
