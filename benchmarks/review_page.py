"""How fast does the review page of a 20-case run render, and what does it look like?

To be fast and need no network, the run is synthesised: each phantom case's truth label map is
copied in as its "predicted" label map and a ``segment-log.json`` is written for it (with ``qa``
from ``latup_edge.runtime.qa``), plus one failed case with its error sentence. The page is then
written with ``write_review_page``, opened in headless Chromium for a screenshot
(``benchmarks/review_page.png``), and its render time read back from the page itself (the
``load`` event's ``performance.now()``, written into the DOM and read with ``--dump-dom``); the
wall time of the headless run is reported beside that of an empty page (the browser's start-up).

    latup-edge phantom /tmp/qa-ordinary --n 20 --seed 8000
    python benchmarks/review_page.py /tmp/qa-ordinary

``--run OUT`` renders a real ``segment`` run's folder instead (its page is written into it), so the
screenshot shows the network's labels, the OOD scores and the audit as a clinic would see them.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import nibabel as nib

from latup_edge.data.cases import discover_cases, load_case_labels
from latup_edge.runtime.qa import case_qa, qa_flags
from latup_edge.runtime.review import write_review_page

HERE = Path(__file__).resolve().parent
WINDOW = "1400,2000"
# No network here: without these Chromium keeps trying (and failing) to reach Google's services.
QUIET = ("--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run")


def synthesise_run(cases_dir: Path, run_dir: Path, n: int = 20) -> Path:
    """A run folder as segment writes it, with the cases' truth as the label maps."""
    run_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for case in discover_cases(cases_dir)[:n]:
        assert case.seg is not None, f"{case.case_id} has no label file to stand in for a prediction"
        label_path = run_dir / f"{case.case_id}.nii.gz"
        shutil.copyfile(case.seg, label_path)
        classes, convention = load_case_labels(case)
        spacing = tuple(float(z) for z in nib.load(label_path).header.get_zooms()[:3])
        qa = case_qa(classes, spacing)
        entries.append({
            "case_id": case.case_id, "folder": str(case.folder), "status": "ok", "error": None,
            "outputs": [str(label_path)], "labels": convention, "qa": qa, "flags": qa_flags(qa),
        })  # fmt: skip
    entries.append({
        "case_id": "BraTS2021_09999", "folder": str(cases_dir / "BraTS2021_09999"), "status": "failed",
        "error": "case BraTS2021_09999: BraTS2021_09999_t2.nii.gz not found (t2 missing): add the file or "
        "leave this case out", "outputs": [],
    })  # fmt: skip
    log = {
        "format": "latup-edge-segment-log/1", "out_dir": str(run_dir), "started": "synthesised",
        "backend": {"name": "none (truth label maps)", "precision": ""}, "cases": entries,
        "summary": {"ok": len(entries) - 1, "failed": 1, "skipped": 0},
    }  # fmt: skip
    (run_dir / "segment-log.json").write_text(json.dumps(log, indent=1))
    return run_dir


def chromium(*args: str) -> tuple[str, float]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise SystemExit("chromium is not on PATH: apt-get install chromium")
    start = time.perf_counter()
    done = subprocess.run(
        [binary, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", *QUIET, *args],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", type=Path, nargs="?", help="phantom cases with label files (20 or more)")
    parser.add_argument("--run", type=Path, default=None, help="a segment output folder to render instead")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--png", type=Path, default=HERE / "review_page.png")
    parser.add_argument("--json", type=Path, default=HERE / "review_page.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if (args.run is None) == (args.cases is None):
            raise SystemExit("give either CASES (a synthesised run) or --run OUT (a segment run's folder)")
        if args.run is not None:
            run_dir = args.run.absolute()
        else:
            run_dir = synthesise_run(args.cases, Path(scratch) / "run", args.n)
        cases = len(json.loads((run_dir / "segment-log.json").read_text())["cases"])
        start = time.perf_counter()
        page = write_review_page(run_dir)
        write_seconds = time.perf_counter() - start
        empty = Path(scratch) / "empty.html"
        empty.write_text("<!DOCTYPE html><html><body></body></html>")
        _, empty_seconds = chromium("--dump-dom", empty.as_uri())
        dom, dom_seconds = chromium("--dump-dom", page.as_uri())
        _, shot_seconds = chromium(f"--screenshot={args.png}", f"--window-size={WINDOW}", page.as_uri())
        found = re.search(r'id="render-ms">([0-9.]+)<', dom)
        result = {
            "cases": cases,
            "page_kb": round(page.stat().st_size / 1024, 1),
            "write_seconds": round(write_seconds, 2),
            "browser_render_ms": float(found[1]) if found else None,
            "headless_dump_dom_seconds": round(dom_seconds, 2),
            "headless_empty_page_seconds": round(empty_seconds, 2),
            "headless_screenshot_seconds": round(shot_seconds, 2),
            "screenshot": args.png.name,
            "screenshot_kb": round(args.png.stat().st_size / 1024, 1),
            "rows": dom.count("<tr") - 1,
            "images": dom.count("data:image/png;base64,"),
            "labels": f"segment run {args.run}" if args.run else "phantom truth copied in as predictions (no run)",
        }
    width = max(len(key) for key in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
