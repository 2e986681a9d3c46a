"""explain report: the page's data from manifests, its thumbnails and sheet, and the page in a real browser."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_cli.io import files as output
from explain_cli.io import report
from explain_cli.cli.main import cli
from tests.synthetic import SHAPE_CLASSES, make_scene

ODD_NAME = "a </script><b> & ünï cödé.png"  # a path that closes the data's script element if embedded naively


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def embedded(page: Path) -> dict:
    text = page.read_text("utf-8")
    match = re.search(r'<script type="application/json" id="explain-data">(.*?)</script>', text, re.S)
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def run_dir(tiny_model, tiny_labels, tmp_path_factory) -> Path:
    """A gradcam run with truth (a CSV) over 14 scenes, one at an awkward path, top-2; then its report."""
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(4)
    rows = ["image,class"]
    for i in range(14):
        scene = make_scene(rng)
        name = ODD_NAME if i == 0 else f"{i:02d}.png"
        path = root / "val" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.image).save(path)
        label = (scene.label + 1) % 3 if i == 1 else scene.label  # one deliberately mislabelled: a wrong card
        rows.append(f'"{name}",{SHAPE_CLASSES[label]}')
    (root / "truth.csv").write_text("\n".join(rows) + "\n")
    out = root / "out"
    result = run("gradcam", root / "val", "--model", tiny_model, "--labels", tiny_labels, "--truth",
                 root / "truth.csv", "--top-k", "2", "-o", out, "--report")
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'report.html'}" in result.stderr and "over 14 images with truth" in result.stderr
    return out


def test_one_card_per_image_with_its_explanations_truth_and_predictions(run_dir):
    data = embedded(run_dir / "report.html")
    records = output.read_manifest(run_dir)
    assert [c["image"] for c in data["cards"]] == list(dict.fromkeys(r["image"] for r in records))
    for card in data["cards"]:
        mine = [r for r in records if r["image"] == card["image"]]
        assert [(e["class_index"], e["overlay"]) for e in card["explanations"]] == [
            (r["class_index"], r["overlay"]) for r in mine]
        assert card["truth"] == mine[0]["truth"] and card["correct"] == mine[0]["correct"]
        assert card["truth_label"] == SHAPE_CLASSES[card["truth"]] == mine[0]["truth_label"]
        assert card["predictions"] == mine[0]["predictions"]
        for path in [card["thumb"]] + [e["thumb"] for e in card["explanations"]]:
            assert (run_dir / path).is_file() and max(Image.open(run_dir / path).size) <= report.THUMB_SIZE
    assert any(ODD_NAME in c["image"] for c in data["cards"])  # and the page's data survived the name


def test_several_manifests_missing_files_and_images_without_explanations(run_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    records = output.read_manifest(out)
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:6]))
    (out / "manifest.shard-1-of-2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[6:]))
    (out / records[0]["overlay"]).unlink()  # a file gone since the run
    (out / "evaluation.jsonl").write_text(json.dumps({"image": "only/evaluated.png", "method": "random",
                                                      "class_index": 0, "label": "red", "deletion_auc": 0.5}) + "\n")
    assert run("report", out).exit_code == 0
    cards = {c["image"]: c for c in embedded(out / "report.html")["cards"]}
    assert set(cards) == {r["image"] for r in records} | {"only/evaluated.png"}
    assert records[0]["overlay"] not in [e["overlay"] for e in cards[records[0]["image"]]["explanations"]]
    assert cards["only/evaluated.png"]["explanations"] == []
    assert cards["only/evaluated.png"]["evaluation"][0]["deletion_auc"] == 0.5


def test_thumbnails_are_made_once_and_stale_ones_removed(run_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    thumbs = out / report.FILES / report.THUMBS
    before = {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir()}
    (thumbs / "0000stale.jpg").write_bytes(b"x")
    assert run("report", out).exit_code == 0
    assert {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir()} == before


def test_contact_sheet_puts_the_wrong_ones_first(run_dir, tmp_path):
    found = report.cards(run_dir)
    entries = report._sheet_entries(run_dir, found, 6)
    wrong = sum(c.correct is False for c in found)
    assert [e[2] for e in entries] == sorted([e[2] for e in entries], key=lambda c: c is not False)
    assert sum(e[2] is False for e in entries) == min(wrong, 6)
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    assert run("report", out, "--sheet", "6").exit_code == 0
    sheet = Image.open(out / "sheet.png")
    assert sheet.size[0] >= 1200 and np.asarray(sheet.convert("L")).std() > 10


def test_every_class_is_shown_by_its_label_even_a_truth_never_predicted(tmp_path):
    """A 1000-class model: an image whose truth (812) is in none of its top five, and two classes sharing a name."""
    top5 = [[281, "tabby", 0.5], [282, "tiger_cat", 0.2], [134, "crane", 0.1], [517, "crane", 0.1], [3, "shark", 0.1]]
    lines = [{"image": "a.jpg", "method": "gradcam", "class_index": 281, "label": "tabby", "overlay": None,
              "predictions": top5, "truth": 812, "truth_label": "space_shuttle", "correct": False},
             {"image": "b.jpg", "method": "gradcam", "class_index": 517, "label": "crane", "overlay": None,
              "predictions": top5, "truth": 134, "truth_label": "crane", "correct": False}]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    data = embedded(report.build(tmp_path))
    a, b = data["cards"]
    assert a["truth_label"] == "space_shuttle"  # was "812"
    assert b["truth_label"] == "crane (134)" and [p[1] for p in b["predictions"]][2:4] == ["crane (134)", "crane (517)"]
    assert a["predictions"][0][1] == "tabby"  # a label no other class has stays as it is


def test_embedded_json_cannot_close_its_script():
    text = report.embed_json({"image": "x</script><script>alert(1)</script><!--"})
    assert "</" not in text and "<!--" not in text and json.loads(text)["image"].startswith("x</script>")


def test_report_of_a_folder_without_manifests_is_a_usage_error(tmp_path):
    result = run("report", tmp_path)
    assert result.exit_code == 2 and "no manifest*.jsonl or evaluation.jsonl" in result.stderr


# --- in a real browser: Debian's Chromium, driven by Playwright (no browser download) ---

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium for the browser tests (.ci/run installs it)")
        pytest.skip("no chromium on this machine: apt-get install chromium")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser, run_dir):
    """The report opened from disk; console errors and every request are recorded."""
    opened = browser.new_page(viewport={"width": 1300, "height": 900})
    opened.errors, opened.requests = [], []
    opened.on("console", lambda message: opened.errors.append(message.text) if message.type == "error" else None)
    opened.on("pageerror", lambda error: opened.errors.append(str(error)))
    opened.on("request", lambda request: opened.requests.append(request.url))

    def go(hash_: str = "") -> None:
        opened.goto((run_dir / "report.html").as_uri() + hash_)
        opened.wait_for_selector("body[data-ready=true]")

    opened.go = go
    yield opened
    assert opened.errors == []
    outside = [u for u in opened.requests if not u.startswith(run_dir.as_uri() + "/")]
    assert outside == []  # nothing from the network, nothing outside OUT_DIR
    opened.close()


def cards_shown(page) -> list[dict]:
    return page.eval_on_selector_all("article.card", "cards => cards.map(c => ({image: c.dataset.image, "
                                     "correct: c.dataset.correct, predicted: c.querySelector('.bars .label')"
                                     ".textContent, p: c.querySelector('.bars .p').textContent}))")


def test_every_card_is_on_the_page(page, run_dir):
    page.go()
    shown = cards_shown(page)
    assert [c["image"] for c in shown] == [c.image for c in report.cards(run_dir)]
    assert all(c["correct"] in ("true", "false") for c in shown)
    png = page.screenshot(full_page=True)
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert pixels.std() > 20  # not blank


def test_wrong_and_class_views_from_the_url(page, run_dir):
    found = report.cards(run_dir)
    page.go("#wrong")
    wrong = sorted(c["image"] for c in cards_shown(page))
    assert wrong and wrong == sorted(c.image for c in found if c.correct is False)
    label = found[0].predictions[0][1]
    page.go(f"#class={label}")
    shown = cards_shown(page)
    assert shown and all(c["predicted"] == label for c in shown)
    assert len(shown) == sum(c.predictions[0][1] == label for c in found)


def test_filter_and_sort_by_clicking_then_the_large_view(page, run_dir):
    page.go()
    page.select_option("#filter-correct", "right")
    shown = cards_shown(page)
    assert shown and all(c["correct"] == "true" for c in shown)
    assert page.evaluate("location.hash") == "#right"  # the view is in the URL
    page.click("#reset")
    page.select_option("#sort", "confidence")
    confidences = [float(c["p"].split()[0]) for c in cards_shown(page)]
    assert confidences == sorted(confidences) and len(confidences) == len(report.cards(run_dir))
    page.click("article.card .explanations button")
    assert page.is_visible("#viewer")
    first = page.get_attribute("#viewer-image", "src")
    assert first.endswith(".jpg") and (run_dir / first).is_file()  # the overlay itself, full size
    page.click("#toggle")
    assert page.get_attribute("#viewer-image", "src") != first and "original" in page.inner_text("#viewer-caption")


def test_confusion_matrix_cells_filter_the_cards(page, run_dir):
    page.go()
    cell = page.locator("#matrix td button").first
    truth, guess = cell.get_attribute("data-truth"), cell.get_attribute("data-predicted")
    count = int(cell.inner_text())
    cell.click()
    shown = cards_shown(page)
    assert len(shown) == count and all(c["predicted"] == guess for c in shown)
    found = {c.image: c for c in report.cards(run_dir)}
    assert all(SHAPE_CLASSES[found[s["image"]].truth] == truth for s in shown)


def test_a_detectors_cards_show_its_boxes_in_the_browser(browser, detector_model, tmp_path):
    from tests.synthetic_detector import make_scene

    rng = np.random.default_rng(12)
    scenes = [make_scene(rng) for _ in range(3)]
    for i, scene in enumerate(scenes):
        Image.fromarray(scene.image).save(tmp_path / f"{i}.png")
    out = tmp_path / "out"
    result = run("detect", *(tmp_path / f"{i}.png" for i in range(3)), "--model", detector_model, "-o", out, "--report")
    assert result.exit_code == 0, result.output
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((out / "report.html").as_uri())
    page.wait_for_selector("body[data-ready=true]")
    shown = page.eval_on_selector_all("article.card", "cards => cards.map(c => ({boxes: [...c.querySelectorAll("
                                      "'.boxes .label')].map(l => l.textContent), pictures: c.querySelectorAll("
                                      "'img.segmentation').length, buttons: [...c.querySelectorAll('button.explanation')]"
                                      ".map(b => b.textContent)}))")
    assert errors == [] and len(shown) == 3
    for card, data in zip(shown, report.cards(out)):
        assert card["boxes"] == [f"{k}. {label}" for k, _, label, _, _ in data.boxes] and data.boxes
        assert card["pictures"] == 1  # the detections picture
        assert all(b.startswith("gradcam · ") and ". " in b for b in card["buttons"])
    page.close()
