"""`explain report` at scale: build time for N images and the page's time to interactive in headless Chromium.

    .venv/bin/python benchmarks/bench_report.py [--images 10000]

Targets (issue 14): 10,000 images built in <= 60 s; the page interactive in <= 3 s. The run is synthetic: each
image's original and overlay are hard links to a few real photos (each decoded for its thumbnail like any
file), a manifest line per image with a top-5 and truth. The second build reuses the thumbnails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_run(folder: Path, count: int) -> None:
    from PIL import Image

    samples = folder / "samples"
    samples.mkdir(parents=True)
    photos = []
    for i, path in enumerate(sorted((ROOT / "sample_images").glob("*.[jp][pn]g"))):
        image = Image.open(path).convert("RGB")
        scale = 1200 / max(image.size)  # about one megapixel, like the photos of bench.py
        target = samples / f"{i}.jpg"
        image.resize((round(image.width * scale), round(image.height * scale))).save(target, quality=90)
        photos.append(target)
    out = folder / "out"
    lines = []
    for i in range(count):
        original = folder / "images" / f"{i // 1000:02d}" / f"img{i:05d}.jpg"
        overlay = Path(f"{i // 1000:02d}") / f"img{i:05d}.gradcam.{i % 7}-class{i % 7}.jpg"
        for path, source in ((original, photos[i % len(photos)]), (out / overlay, photos[(i + 1) % len(photos)])):
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, path)
        top = [[(i + r) % 7, f"class{(i + r) % 7}", round(0.6 / (r + 1), 4)] for r in range(5)]
        lines.append(json.dumps({"image": str(original), "source": str(original), "model": "m", "layer": "l",
                                 "method": "gradcam", "class_index": i % 7, "label": f"class{i % 7}",
                                 "score": 0.6, "rank": 1, "overlay": overlay.as_posix(), "heatmap": None,
                                 "figure": None, "truth": (i * 3) % 7, "correct": (i * 3) % 7 == i % 7,
                                 "predictions": top, "entropy": 1.0 + (i % 13) / 10}) + "\n")
    (out / "manifest.jsonl").write_text("".join(lines))


def interactive_seconds(page: Path) -> float | None:
    chromium = shutil.which("chromium")
    if chromium is None:
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                         "--disable-background-networking", "--no-first-run"])
        tab = browser.new_page()
        start = time.perf_counter()
        tab.goto(page.as_uri())
        tab.wait_for_selector("body[data-ready=true]")
        tab.select_option("#sort", "confidence")  # and it answers a click
        elapsed = time.perf_counter() - start
        browser.close()
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args()
    from explain_cli.io import report

    with tempfile.TemporaryDirectory(prefix="explain-bench-report-") as work:
        folder = Path(work)
        make_run(folder, args.images)
        out = folder / "out"
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            page = report.build(out)
            timings.append(time.perf_counter() - start)
        interactive = interactive_seconds(page)
        size = page.stat().st_size / 1e6
        thumbs = sum(p.stat().st_size for p in (out / report.FILES / report.THUMBS).iterdir()) / 1e6
        print(f"| measure ({args.images:,} images, {os.cpu_count()} cores) | value |\n| --- | --- |")
        print(f"| first build: {2 * args.images:,} thumbnails + page (target <= 60 s) | **{timings[0]:.1f} s** |")
        print(f"| second build, thumbnails reused | {timings[1]:.1f} s |")
        print(f"| report.html / thumbnails | {size:.1f} MB / {thumbs:.0f} MB |")
        if interactive is not None:
            print(f"| page interactive in headless Chromium, then a sort (target <= 3 s) | **{interactive:.2f} s** |")


if __name__ == "__main__":
    main()
