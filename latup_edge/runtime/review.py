"""The review page of a segment run: one self-contained, offline HTML file for a person to check every case.

``write_review_page`` reads ``RUN_DIR/segment-log.json`` (written by ``latup_edge.runtime.segment``),
each case's label map and its FLAIR (from the log's ``folder``), and writes ``RUN_DIR/review.html``:
a table of all cases (volumes, flags, OOD and audit results when the log has them; sortable by
clicking a column header; flagged and failed cases first), then per case three orthogonal slices
through the tumour's centre of mass (the brain's when no tumour was found): FLAIR in greyscale under
the label colours, embedded as PNG data URIs, so the page needs no network and no other file.

Display: radiological. Axial and coronal slices show the patient's left on the image's right;
axial has anterior up, coronal and sagittal superior up, sagittal anterior on the left. Images are
reoriented to RAS from their affine first, so the display does not depend on the voxel order on disk.

>>> write_review_page(Path("segmented"))  # doctest: +SKIP
PosixPath('segmented/review.html')
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from latup_edge.data.cases import discover_cases
from latup_edge.data.labels import detect_convention, to_classes
from latup_edge.errors import LatupError
from latup_edge.fileio import atomic_write
from latup_edge.runtime.qa import FLAG_SEPARATOR, qa_flags, region_volumes_ml

LOG_NAME = "segment-log.json"
PAGE_NAME = "review.html"
# Longest side of each embedded slice: 20 cases x 3 slices stay under a megabyte and load at once.
MAX_SIDE = 200
OVERLAY_ALPHA = 0.55
# Class colours (RGB) and names, in class order 1-3; the legend shows the same.
CLASS_COLOURS: dict[int, tuple[str, tuple[int, int, int]]] = {
    1: ("NCR (necrosis)", (230, 40, 40)),
    2: ("ED (oedema)", (60, 200, 60)),
    3: ("ET (enhancing)", (255, 215, 0)),
}
VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")


class ReviewError(LatupError):
    """A run folder that cannot be reviewed; one sentence saying what to do."""


def write_review_page(run_dir: Path, out: Path | None = None) -> Path:
    """Write the review page of the segment run in ``run_dir``; returns its path (default ``run_dir/review.html``).

    Raises ReviewError when ``run_dir`` has no readable ``segment-log.json``. A case whose label map
    or FLAIR cannot be read is still listed, with the reason instead of its slices.
    """
    run_dir = Path(run_dir)
    log_path = run_dir / LOG_NAME
    try:
        log = json.loads(log_path.read_text())
    except FileNotFoundError:
        raise ReviewError(f"{log_path} not found: pass the output folder of a latup-edge segment run") from None
    except (OSError, ValueError) as error:
        raise ReviewError(f"cannot read {log_path} ({error}): rerun segment to write it again") from None
    entries = [_review_case(entry, run_dir) for entry in log.get("cases", [])]
    entries.sort(key=lambda case: (not case["needs_review"], case["case_id"]))
    page = _page(log, entries)
    out = Path(out) if out is not None else run_dir / PAGE_NAME
    atomic_write(out, lambda temporary: temporary.write_text(page, encoding="utf-8"))
    return out


def orient_slices(image: np.ndarray, centre: Sequence[int]) -> dict[str, np.ndarray]:
    """Axial, coronal and sagittal 2-D views through ``centre`` of a RAS-ordered volume, in display order.

    Rows run top to bottom, columns left to right on screen: axial (anterior up, patient's left on
    the right), coronal (superior up, patient's left on the right), sagittal (superior up, anterior
    on the left).
    """
    x, y, z = (int(c) for c in centre)
    return {
        "axial": image[:, :, z].T[::-1, ::-1],
        "coronal": image[:, y, :].T[::-1, ::-1],
        "sagittal": image[x, :, :].T[::-1, ::-1],
    }


def overlay_png(grey: np.ndarray, classes: np.ndarray, pixel_mm: tuple[float, float]) -> bytes:
    """A PNG of a 2-D greyscale slice (0-1) under the class colours, scaled to the physical aspect
    ``pixel_mm`` (row, column size) and to at most ``MAX_SIDE`` pixels a side."""
    from PIL import Image

    rgb = np.repeat((np.clip(grey, 0, 1) * 255)[..., None], 3, axis=2)
    for value, (_, colour) in CLASS_COLOURS.items():
        mask = classes == value
        rgb[mask] = (1 - OVERLAY_ALPHA) * rgb[mask] + OVERLAY_ALPHA * np.array(colour)
    picture = Image.fromarray(rgb.astype(np.uint8), mode="RGB")
    height_mm, width_mm = grey.shape[0] * pixel_mm[0], grey.shape[1] * pixel_mm[1]
    scale = MAX_SIDE / max(height_mm, width_mm)
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    picture = picture.resize(size, Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _review_case(entry: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """What the page shows of one log entry: its figures, flags, and slices (or why there are none)."""
    case_id = str(entry.get("case_id", "?"))
    status = str(entry.get("status", "unknown"))
    qa = entry.get("qa") or {}
    ood = entry.get("ood") or {}
    case: dict[str, Any] = {
        "case_id": case_id,
        "status": status,
        "error": entry.get("error"),
        "audit": entry.get("audit"),
        "ood": ood,
        "qa": qa,
        "volumes": dict(qa.get("volumes_ml") or {}),
        "images": {},
        "note": None,
    }
    if status == "ok":
        try:
            classes, flair, zooms = _load_case(entry, case_id, run_dir)
            if not case["volumes"]:
                case["volumes"] = region_volumes_ml(classes, zooms)
            case["images"] = _slices(classes, flair, zooms)
        except (OSError, EOFError, ValueError) as error:
            case["note"] = f"no slices: {error}"
    flags = entry.get("flags")
    if flags is None:
        flags = (qa_flags(qa) if "volumes_ml" in qa else []) + list(ood.get("flags") or [])
    case["flags"] = [str(flag) for flag in flags]
    case["needs_review"] = status == "failed" or bool(case["flags"]) or _audit_failed(case["audit"])
    return case


def _load_case(entry: dict[str, Any], case_id: str, run_dir: Path) -> tuple[np.ndarray, np.ndarray | None, tuple]:
    """The case's classes and FLAIR (or None), both reoriented to RAS, and their voxel size in mm."""
    label_path = _label_path(entry, case_id, run_dir)
    labels_image = nib.as_closest_canonical(nib.load(label_path))
    labels = np.asarray(labels_image.dataobj).astype(np.uint8)
    classes = to_classes(labels, entry.get("labels") or detect_convention(labels))
    zooms = tuple(float(z) for z in labels_image.header.get_zooms()[:3])
    flair = None
    folder = entry.get("folder")
    if folder and Path(folder).is_dir():
        found = [c for c in discover_cases(Path(folder)) if c.case_id == case_id and "flair" in c.files]
        if found:
            flair_image = nib.as_closest_canonical(nib.load(found[0].files["flair"]))
            flair = np.asarray(flair_image.dataobj, dtype=np.float32)
            if flair.shape[:3] != classes.shape:
                flair = None
            else:
                flair = flair.reshape(classes.shape)
    return classes, flair, zooms


def _label_path(entry: dict[str, Any], case_id: str, run_dir: Path) -> Path:
    candidates = [Path(p) for p in entry.get("outputs", []) if not str(p).endswith("_probabilities.nii.gz")]
    candidates += [run_dir / path.name for path in candidates] + [run_dir / f"{case_id}.nii.gz"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"label map {case_id}.nii.gz not found in {run_dir}")


def _slices(classes: np.ndarray, flair: np.ndarray | None, zooms: tuple) -> dict[str, str]:
    """PNG data URIs of the three views through the tumour's centre (the brain's when there is none)."""
    if flair is None:
        grey = np.zeros(classes.shape, np.float32)
    else:
        brain = flair[flair > 0]
        low, high = np.percentile(brain, (0.5, 99.5)) if brain.size else (0.0, 1.0)
        grey = (flair - low) / max(high - low, 1e-6)
    if classes.any():
        centre = ndimage.center_of_mass(classes > 0)
    elif flair is not None and (flair > 0).any():
        centre = ndimage.center_of_mass(flair > 0)
    else:
        centre = [size / 2 for size in classes.shape]
    centre = [min(max(int(round(c)), 0), size - 1) for c, size in zip(centre, classes.shape, strict=True)]
    greys, labels = orient_slices(grey, centre), orient_slices(classes, centre)
    x, y, z = zooms
    pixel_mm = {"axial": (y, x), "coronal": (z, x), "sagittal": (z, y)}
    return {
        view: "data:image/png;base64,"
        + base64.b64encode(overlay_png(greys[view], labels[view], pixel_mm[view])).decode("ascii")
        for view in VIEWS
    }


def _audit_failed(audit: Any) -> bool:
    if isinstance(audit, dict):
        return audit.get("passed") is False or audit.get("ok") is False or audit.get("status") == "failed"
    return False


def _compact(value: Any) -> str:
    """A short human text of a log value (dicts as key: value pairs)."""
    if value is None or value == {} or value == []:
        return ""
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_compact(item)}" for key, item in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_compact(item) for item in value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _audit_text(audit: Any) -> str:
    """An audit entry as a reader wants it: "fp32 agreement WT 0.997 / TC 0.978 / ET 0.982, below the
    gate 0.99 in TC, ET (22.9 s)"; anything else as ``_compact`` words it."""
    if not (isinstance(audit, dict) and isinstance(audit.get("agreement"), dict)):
        return _compact(audit)
    scores = " / ".join(f"{region} {value:.3f}" for region, value in audit["agreement"].items())
    verdict = (
        f"below the gate {audit.get('gate')} in {', '.join(audit['below_gate'])}"
        if audit.get("below_gate")
        else f"at or above the gate {audit.get('gate')}"
    )
    seconds = f" ({audit['seconds']:.1f} s)" if isinstance(audit.get("seconds"), int | float) else ""
    return f"{audit.get('reference', 'fp32')} agreement {scores}, {verdict}{seconds}"


def _number(value: Any) -> str:
    return "" if value is None else f"{float(value):.1f}"


def _page(log: dict[str, Any], cases: list[dict[str, Any]]) -> str:
    columns = ("case", "status", "flags", "WT mL", "TC mL", "ET mL", "low confidence", "OOD score", "audit")
    rows = []
    for case in cases:
        volumes, low = case["volumes"], case["qa"].get("low_confidence_fraction")
        score = case["ood"].get("score")
        cells = [
            (case["case_id"], f'<a href="#{_anchor(case["case_id"])}">{html.escape(case["case_id"])}</a>'),
            (case["status"], html.escape(case["status"])),
            (len(case["flags"]) + (case["status"] == "failed"), html.escape(FLAG_SEPARATOR.join(case["flags"]))),
            *[(volumes.get(region, ""), _number(volumes.get(region))) for region in ("WT", "TC", "ET")],
            ("" if low is None else low, "" if low is None else f"{low:.0%}"),
            ("" if score is None else score, "" if score is None else f"{score:.1f}"),
            (_audit_text(case["audit"]), html.escape(_audit_text(case["audit"]))),
        ]
        body = "".join(f'<td data-value="{html.escape(str(value))}">{text}</td>' for value, text in cells)
        flagged = ' class="review"' if case["needs_review"] else ""
        rows.append(f'<tr{flagged} data-case="{html.escape(case["case_id"])}">{body}</tr>')
    header = "".join(f'<th data-column="{i}" title="sort">{name}</th>' for i, name in enumerate(columns))
    legend = "".join(
        f'<span class="swatch" style="background:rgb{colour}"></span>{html.escape(name)} '
        for name, colour in CLASS_COLOURS.values()
    )
    summary = log.get("summary", {})
    backend = log.get("backend") or {}
    title = f"latup-edge review: {html.escape(str(log.get('out_dir', '')))}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }}
th {{ background: #eee; cursor: pointer; user-select: none; }}
tr.review td {{ background: #fff3e0; }}
.case {{ border-top: 2px solid #ddd; padding: 0.6em 0; }}
.case img {{ margin-right: 8px; background: #000; image-rendering: pixelated; }}
figure {{ display: inline-block; margin: 0 6px 0 0; }}
figcaption {{ font-size: 12px; color: #555; }}
.swatch {{ display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 10px; vertical-align: middle; }}
.flag {{ color: #b34700; }} .error {{ color: #b00020; }}
</style></head><body>
<h1>{title}</h1>
<p>{summary.get("ok", 0)} ok, {summary.get("failed", 0)} failed, {summary.get("skipped", 0)} skipped;
backend {html.escape(str(backend.get("name", "?")))} {html.escape(str(backend.get("precision", "")))};
started {html.escape(str(log.get("started", "")))}.</p>
<p>Display: radiological. Axial and coronal: the patient's left is on the image's right; axial has
anterior up, coronal and sagittal superior up, sagittal anterior on the left. Slices pass through the
tumour's centre of mass (the brain's when no tumour was found). Labels: {legend}</p>
<p>Click a column header to sort; flagged and failed cases come first.</p>
<table id="cases"><thead><tr>{header}</tr></thead><tbody>
{"".join(rows)}
</tbody></table>
{"".join(_case_section(case) for case in cases)}
<p style="color:#888">Rendered in <span id="render-ms">?</span> ms.</p>
<script>
(function () {{
  var table = document.getElementById("cases"), body = table.tBodies[0], last = -1, ascending = true;
  function key(row, column) {{
    var text = row.cells[column].getAttribute("data-value"), number = parseFloat(text);
    return text !== "" && !isNaN(number) && isFinite(text) ? number : text.toLowerCase();
  }}
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {{
    th.addEventListener("click", function () {{
      var column = Number(th.getAttribute("data-column"));
      ascending = column === last ? !ascending : true;
      last = column;
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {{
        var ka = key(a, column), kb = key(b, column);
        if (typeof ka !== typeof kb) {{ ka = String(ka); kb = String(kb); }}
        return (ka < kb ? -1 : ka > kb ? 1 : 0) * (ascending ? 1 : -1);
      }});
      rows.forEach(function (row) {{ body.appendChild(row); }});
    }});
  }});
  window.addEventListener("load", function () {{
    document.getElementById("render-ms").textContent = performance.now().toFixed(1);
  }});
}})();
</script>
</body></html>
"""


def _anchor(case_id: str) -> str:
    return "case-" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in case_id)


def _case_section(case: dict[str, Any]) -> str:
    parts = [f'<div class="case" id="{_anchor(case["case_id"])}"><h3>{html.escape(case["case_id"])}</h3>']
    if case["status"] == "failed":
        parts.append(f'<p class="error">failed: {html.escape(str(case["error"] or "no reason recorded"))}</p>')
    elif case["status"] != "ok":
        parts.append(f"<p>{html.escape(case['status'])}: no new outputs in this run.</p>")
    for flag in case["flags"]:
        parts.append(f'<p class="flag">&#9873; {html.escape(flag)}</p>')
    if case["note"]:
        parts.append(f'<p class="error">{html.escape(case["note"])}</p>')
    for view, uri in case["images"].items():
        parts.append(f'<figure><img src="{uri}" alt="{view} slice"><figcaption>{view}</figcaption></figure>')
    if case["ood"].get("worst"):
        parts.append(
            f"<p>OOD: score {case['ood'].get('score', 0):.1f}, largest on {html.escape(case['ood']['worst'])}</p>"
        )
    if case["audit"]:
        parts.append(f"<p>audit: {html.escape(_audit_text(case['audit']))}</p>")
    parts.append("</div>")
    return "\n".join(parts)
