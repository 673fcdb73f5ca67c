"""The review page (latup_edge.runtime.review) of a small synthetic run: written, offline, sortable, complete."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from latup_edge.runtime.qa import case_qa
from latup_edge.runtime.review import ReviewError, orient_slices, write_review_page
from latup_edge.runtime.trust import audit_case

SHAPE = (32, 36, 28)


def _run(tmp_path: Path) -> Path:
    """Two ok cases (one with qa, ood and audit, one bare) and one failed case, as segment writes them."""
    cases, run = tmp_path / "cases", tmp_path / "run"
    run.mkdir()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    entries = []
    for index in range(2):
        case_id = f"BraTS2021_0000{index}"
        folder = cases / case_id
        folder.mkdir(parents=True)
        grid = np.indices(SHAPE)
        brain = ((grid - np.array(SHAPE)[:, None, None, None] / 2) ** 2 / 120).sum(axis=0) < 1
        flair = np.where(brain, 100 + 10 * grid[0], 0).astype(np.int16)
        for key in ("flair", "t1ce", "t2", "t1"):
            nib.save(nib.Nifti1Image(flair, affine), folder / f"{case_id}_{key}.nii.gz")
        labels = np.zeros(SHAPE, np.uint8)
        labels[10:18, 12:20, 10:16] = 2
        labels[12:16, 14:18, 11:15] = 4
        nib.save(nib.Nifti1Image(labels, affine), run / f"{case_id}.nii.gz")
        entry = {
            "case_id": case_id, "folder": str(folder), "status": "ok", "error": None,
            "outputs": [str(run / f"{case_id}.nii.gz")], "labels": "2021",
        }  # fmt: skip
        if index == 0:
            entry["qa"] = case_qa(np.where(labels == 4, 3, labels), (1, 1, 1))
            entry["ood"] = {"score": 7.5, "worst": "spacing.z", "flags": ["spacing.z 3 above the reference 1..1"]}
            entry["audit"] = audit_case(np.where(labels == 4, 3, labels), np.where(labels == 4, 2, labels), 0.99, 1.5)
        entries.append(entry)
    entries.append({
        "case_id": "BraTS2021_00009", "folder": str(cases / "BraTS2021_00009"), "status": "failed",
        "error": "case BraTS2021_00009: BraTS2021_00009_t2.nii.gz not found (t2 missing): add the file", "outputs": [],
    })  # fmt: skip
    log = {"format": "latup-edge-segment-log/1", "out_dir": str(run), "cases": entries, "summary": {"ok": 2}}
    (run / "segment-log.json").write_text(json.dumps(log))
    return run


@pytest.fixture
def page(tmp_path) -> tuple[Path, str]:
    path = write_review_page(_run(tmp_path))
    return path, path.read_text()


def test_the_page_is_one_offline_file_with_a_row_and_images_per_case(page):
    path, text = page
    assert path.name == "review.html"
    assert not re.search(r"https?:", text), "the page must not reference the network"
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(?!data:|#)', text), "no other file may be needed"
    assert len(re.findall(r"<tr[^>]* data-case=", text)) == 3
    assert text.count('src="data:image/png;base64,') == 2 * 3
    assert "radiological" in text and "patient's left is on the image's right" in text


def test_flagged_and_failed_cases_come_first_and_show_their_results(page):
    _, text = page
    order = re.findall(r'data-case="([^"]+)"', text)
    assert order == ["BraTS2021_00000", "BraTS2021_00009", "BraTS2021_00001"]
    assert "t2 missing" in text and "spacing.z 3 above the reference" in text
    assert "fp32 agreement WT 1.000 / TC 0.000 / ET 0.000, below the gate 0.99 in TC, ET (1.5 s)" in text
    assert "7.5" in text


def test_the_table_sorts_by_clicking_a_column(page):
    _, text = page
    assert 'addEventListener("click"' in text and "rows.sort" in text
    assert len(re.findall(r'<th data-column="\d+"', text)) == 9
    assert re.search(r'<td data-value="[0-9.]+">', text), "numeric cells carry their sort value"


def test_a_folder_without_a_log_is_one_sentence(tmp_path):
    with pytest.raises(ReviewError, match="segment-log.json not found"):
        write_review_page(tmp_path)


def test_slices_are_shown_radiologically():
    volume = np.zeros((4, 5, 6))
    volume[3, 4, 5] = 1  # RAS: the patient's far right, most anterior, most superior
    views = orient_slices(volume, (3, 4, 5))
    assert views["axial"][0, 0] == 1  # anterior up; the patient's right on the image's left
    assert views["coronal"][0, 0] == 1  # superior up; the patient's right on the image's left
    assert views["sagittal"][0, 0] == 1  # superior up; anterior on the left


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not on PATH (apt-get install chromium)")
def test_headless_chromium_renders_a_non_blank_page(page, tmp_path):
    from PIL import Image

    path, _ = page
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--disable-gpu", "--no-sandbox", f"--screenshot={shot}",
         "--window-size=1000,1400", path.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.std() > 20, "the screenshot is blank"
    colours = pixels.reshape(-1, 3)
    assert np.any((colours[:, 1] > 150) & (colours[:, 0] < 120) & (colours[:, 2] < 120)), "no oedema overlay visible"


# Loads the review page in a frame, clicks column headers as a user would, and writes the row order after each.
CLICKER = """<!DOCTYPE html><html><body><pre id="orders"></pre><iframe id="page" src="review.html"></iframe><script>
document.getElementById("page").addEventListener("load", function () {
  var doc = this.contentDocument, orders = [];
  function order() {
    return Array.prototype.map.call(doc.querySelectorAll("#cases tbody tr"), function (row) {
      return row.getAttribute("data-case");
    }).join(",");
  }
  orders.push(order());
  [0, 0, 2].forEach(function (column) {
    doc.querySelector('th[data-column="' + column + '"]').click();
    orders.push(order());
  });
  document.getElementById("orders").textContent = orders.join(";");
});
</script></body></html>"""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not on PATH (apt-get install chromium)")
def test_clicking_a_header_in_chromium_sorts_the_rows(page):
    path, _ = page
    clicker = path.with_name("clicker.html")
    clicker.write_text(CLICKER)
    done = subprocess.run(
        ["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--allow-file-access-from-files",
         "--virtual-time-budget=10000", "--dump-dom", clicker.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    orders = re.search(r'<pre id="orders">([^<]*)</pre>', done.stdout)[1].split(";")
    first, by_case, by_case_down, by_flags = ([case[-5:] for case in order.split(",")] for order in orders)
    assert first == ["00000", "00009", "00001"]  # as written: flagged and failed first
    assert by_case == ["00000", "00001", "00009"]  # one click: ascending
    assert by_case_down == ["00009", "00001", "00000"]  # the same header again: descending
    assert by_flags[0] == "00001"  # the flags column, ascending: the case without flags first
