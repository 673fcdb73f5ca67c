"""The report of a drift run: its tables, overlay figures and the report folder.

``latup_edge.runtime.drift.run_drift`` runs a bundle's precisions on a folder of cases; here
``add_differences`` adds, per case and region, the differences of Dice and HD95 from fp32, and
``drift_tables`` turns the result into the tables every output shows (terminal, Markdown, HTML);
``write_report`` writes a folder with ``report.md``, a self-contained ``report.html`` (images
embedded as data URIs), one overlay PNG per case (FLAIR, labels of fp32 and of the compared
precision, where they differ) and ``latency.png`` (seconds per case of each precision during the run).

>>> tables = drift_tables(run_drift(Path("BraTS2021"), Path("bundle")))   # doctest: +SKIP
>>> [table.title for table in tables][-1]                                 # doctest: +SKIP
'Verdicts (MLPerf tiers: mean Dice >= 99 % / 99.9 % of fp32 in every region)'
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from latup_edge.data.labels import REGIONS
from latup_edge.data.naming import MODEL_MODALITIES
from latup_edge.data.preprocess import undo_crop
from latup_edge.evaluate.drift import REFERENCE, TIERS, PreparedCase, describe_basis, format_ratio
from latup_edge.fileio import atomic_write

if TYPE_CHECKING:
    from PIL import Image as PILImage

# Difference-map colours: tumour in fp32 only, in the compared precision only, another tumour class.
DIFFERENCE_COLOURS: dict[str, tuple[int, int, int]] = {
    "only_reference": (0, 190, 255),
    "only_compared": (255, 60, 220),
    "other_class": (255, 150, 0),
}
PRECISION_COLOURS: dict[str, tuple[int, int, int]] = {
    "fp32": (90, 110, 160),
    "bf16": (60, 160, 90),
    "int8": (230, 130, 30),
}
SCALE = 2
MIN_SHEET_WIDTH = 960
FONT_SIZE = 14


class Table(NamedTuple):
    """A table as every output shows it: cells are already formatted strings."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    caption: str = ""


@dataclass(frozen=True)
class CaseSlice:
    """The axial slice of one case that its overlay figure shows (class maps in voxel order X, Y)."""

    case_id: str
    z: int
    flair: np.ndarray  # greyscale slice, uint8, display orientation (anterior up)
    truth: np.ndarray | None
    reference: np.ndarray
    compared: np.ndarray
    compared_name: str
    view: tuple[slice, slice]  # rows, columns of the display to show: the brain box
    disagreeing_voxels: int  # in the whole volume


def add_differences(per_case: Mapping[str, Any]) -> None:
    """Add ``difference`` (Dice and HD95 minus fp32's, per region) to every labelled reduced precision."""
    for entry in per_case.values():
        reference = entry["precisions"][REFERENCE].get("metrics")
        for name, scores in entry["precisions"].items():
            if name == REFERENCE or reference is None:
                continue
            scores["difference"] = {
                region: {
                    metric: scores["metrics"][region][metric] - reference[region][metric] for metric in ("dice", "hd95")
                }
                for region in REGIONS
            }


def case_slice(
    case: PreparedCase, reference_scores: np.ndarray, compared_scores: np.ndarray, compared: str
) -> CaseSlice:
    """The overlay's slice: the axial slice with the most tumour in the labels, else in fp32's prediction."""
    from latup_edge.data.preview import grey_slice, tumour_slice

    reference, other = case.classes(reference_scores), case.classes(compared_scores)
    # The labels pick the slice when there are any: a poor prediction must not hide the tumour.
    z = tumour_slice(case.truth if case.truth is not None else reference)
    inputs = case.inputs[0]
    flair = undo_crop(_displayable(inputs[MODEL_MODALITIES.index("flair")], np.any(inputs != 0, axis=0)), case.crop)
    # The display is transposed (rows are Y, columns X): show the brain box of the slice.
    x, y = (
        slice(max(low, 0), min(high, size))
        for low, high, size in zip(case.crop.start[:2], case.crop.stop[:2], case.crop.original_shape[:2], strict=True)
    )
    return CaseSlice(
        case.case_id, z, grey_slice(flair, z),
        case.truth[:, :, z] if case.truth is not None else None,
        reference[:, :, z], other[:, :, z], compared, (y, x), int(np.count_nonzero(reference != other)),
    )  # fmt: skip


def _displayable(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """One network input channel with the brain shifted to start at zero: a z-scored brain is half
    negative, and the display windows the positive voxels. A non-negative (min-max) channel is kept."""
    low = float(image[brain].min(initial=0))
    if low >= 0:
        return image
    shown = np.zeros_like(image)
    shown[brain] = image[brain] - low
    return shown


def drift_tables(result: Mapping[str, Any]) -> list[Table]:
    """Per case, per region summary, and verdicts: the tables of the terminal, Markdown and HTML outputs."""
    names = list(result["summary"])
    reduced = [name for name in names if name != REFERENCE]
    per_case = []
    for case_id, entry in result["cases"].items():
        reference = entry["precisions"][REFERENCE]
        for name in reduced:
            scores = entry["precisions"][name]
            for region in REGIONS:
                agreement = f"{scores['agreement'][region]:.4f}"
                if "metrics" not in scores:
                    per_case.append((case_id, name, region, "-", "-", "-", "-", "-", agreement))
                    continue
                metrics, difference = scores["metrics"][region], scores["difference"][region]
                per_case.append((
                    case_id, name, region, f"{metrics['dice']:.4f}", f"{reference['metrics'][region]['dice']:.4f}",
                    f"{difference['dice']:+.4f}", f"{metrics['hd95']:.2f}", f"{difference['hd95']:+.2f}", agreement,
                ))  # fmt: skip
    regions = []
    raw_shown = any("raw_agreement_mean" in row for s in result["summary"].values() for row in s["regions"].values())
    for name in reduced:
        for region, row in result["summary"][name]["regions"].items():
            labelled = "dice" in row
            raw = (f"{row['raw_agreement_mean']:.4f} / {row['raw_agreement_min']:.4f}",) if raw_shown else ()
            ratio = format_ratio(row, interval=True)
            regions.append((
                name, region,
                *((f"{row['dice']:.4f}", f"{row['dice_fp32']:.4f}", ratio, f"{row['hd95']:.2f}")
                  if labelled else ("-",) * 4),
                f"{row['agreement_mean']:.4f}", f"{row['agreement_min']:.4f}", *raw,
            ))  # fmt: skip
    basis = next(iter(result["summary"].values())).get("labels", "network argmax")
    verdicts = []
    for name in names:
        summary = result["summary"][name]
        seconds = [entry["seconds"][name] for entry in result["cases"].values()]
        info = result["precisions"][name]
        verdicts.append((
            name, f"{summary['worst_ratio']:.4f}", describe_basis(summary),
            *("pass" if summary["verdicts"][tier] else "fail" for tier in TIERS),
            f"{float(np.median(seconds)):.2f}", str(info["resolved"].get("INFERENCE_PRECISION_HINT", "-")),
            "reference" if name == REFERENCE else ("yes" if info["approved"] else "no"),
        ))  # fmt: skip
    labelled = sum("metrics" in entry["precisions"][REFERENCE] for entry in result["cases"].values())
    return [
        Table(
            "Per case: Dice and HD95 against the labels, and agreement with fp32",
            ("case", "precision", "region", "Dice", "Dice fp32", "ΔDice", "HD95 mm", "ΔHD95", "agreement"),
            per_case,
            "Δ: minus fp32's value; agreement: Dice between this precision's and fp32's prediction",
        ),
        Table(
            "Summary per region",
            ("precision", "region", "Dice", "Dice fp32", "ratio [95 % interval]", "HD95 mm")
            + ("agreement mean", "agreement min")
            + (("argmax agreement mean / min",) if raw_shown else ()),
            regions,
            f"labels scored: {basis}; means over {labelled} labelled of {len(result['cases'])} cases (Dice, HD95) "
            "and over all (agreement)" + ("; argmax: the network's labels before post-processing" if raw_shown else ""),
        ),
        Table(
            "Verdicts (MLPerf tiers: mean Dice >= 99 % / 99.9 % of fp32 in every region)",
            (
                "precision",
                "worst ratio",
                "basis",
                *(f">= {tier} %" for tier in TIERS),
                "median s / case",
                "resolved hint",
                "approved in bundle",
            ),
            verdicts,
            "without labels the agreement with fp32 stands in for the Dice ratio",
        ),  # fmt: skip
    ]


def write_report(result: Mapping[str, Any], slices: Sequence[CaseSlice], folder: Path) -> Path:
    """Write ``report.md``, ``report.html``, ``<case>.png`` per case and ``latency.png`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = {f"{item.case_id}.png": _png_bytes(overlay_image(item)) for item in slices}
    images["latency.png"] = _png_bytes(latency_image(result))
    for name, data in images.items():
        atomic_write(folder / name, lambda tmp, data=data: tmp.write_bytes(data))
    tables = drift_tables(result)
    figures = [(f"{item.case_id}.png", f"{item.case_id}: FLAIR, labels and where they differ") for item in slices]
    figures.append(("latency.png", "seconds per case of each precision during the drift run"))
    markdown = _markdown(result, tables, figures)
    page = _html(result, tables, figures, images)
    atomic_write(folder / "report.md", lambda tmp: tmp.write_text(markdown))
    atomic_write(folder / "report.html", lambda tmp: tmp.write_text(page))
    return folder


def overlay_image(item: CaseSlice) -> PILImage.Image:
    """FLAIR, (labels,) fp32 and the compared precision over FLAIR, and where the two disagree."""
    from PIL import Image, ImageDraw

    from latup_edge.data.preview import LABEL_COLOURS, LABEL_NAMES, label_overlay

    rows, columns = item.view
    panels = [("FLAIR", np.repeat(item.flair[..., None], 3, axis=2))]
    if item.truth is not None:
        panels.append(("labels (truth)", label_overlay(item.flair, item.truth)))
    panels += [
        (REFERENCE, label_overlay(item.flair, item.reference)),
        (item.compared_name, label_overlay(item.flair, item.compared)),
        (f"difference {REFERENCE} / {item.compared_name}", _difference(item.flair, item.reference, item.compared)),
    ]
    crops = [Image.fromarray(np.ascontiguousarray(rgb[rows, columns])) for _, rgb in panels]
    # Small volumes are enlarged further so that the header lines fit.
    scale = max(SCALE, -(-MIN_SHEET_WIDTH // (len(panels) * crops[0].width)))
    width, height = crops[0].width * scale, crops[0].height * scale
    header, footer = 2 * FONT_SIZE + 8, FONT_SIZE + 14
    sheet = Image.new("RGB", (width * len(panels), header + height + footer), "black")
    draw = ImageDraw.Draw(sheet)
    font = _font(FONT_SIZE)
    on_slice = int(np.count_nonzero(item.reference != item.compared))
    draw.text((6, 4), f"{item.case_id}: axial slice z={item.z} (most tumour)", fill="white", font=font)
    draw.text(
        (6, FONT_SIZE + 6),
        f"{REFERENCE} and {item.compared_name} disagree on {item.disagreeing_voxels} voxels "
        f"({on_slice} on this slice); anterior up, patient's right on the left",
        fill=(200, 200, 200), font=font,
    )  # fmt: skip
    for i, ((title, _), crop) in enumerate(zip(panels, crops, strict=True)):
        sheet.paste(crop.resize((width, height), Image.Resampling.NEAREST), (i * width, header))
        title_width = int(draw.textlength(title, font=font))
        draw.rectangle((i * width, header, i * width + title_width + 8, header + FONT_SIZE + 6), fill="black")
        draw.text((i * width + 4, header + 2), title, fill="white", font=font)
    legend = [(name, LABEL_COLOURS[value]) for value, name in LABEL_NAMES.items()] + [
        (f"{REFERENCE} only", DIFFERENCE_COLOURS["only_reference"]),
        (f"{item.compared_name} only", DIFFERENCE_COLOURS["only_compared"]),
        ("other tumour class", DIFFERENCE_COLOURS["other_class"]),
    ]
    _legend(draw, legend, (6, header + height + 7), font)
    return sheet


def latency_image(result: Mapping[str, Any]) -> PILImage.Image:
    """A bar per precision: median seconds per case during the drift run, a dot per case."""
    from PIL import Image, ImageDraw

    names = list(result["summary"])
    seconds = {name: [entry["seconds"][name] for entry in result["cases"].values()] for name in names}
    largest = max(max(values) for values in seconds.values())
    step = _tick_step(largest)
    ticks = max(int(np.ceil(largest * 1.02 / step)), 1)
    top = step * ticks
    width, left, right, bar, gap, header = 760, 90, 70, 34, 18, 84
    plot_width = width - left - right
    height = header + len(names) * (bar + gap) + 56
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(FONT_SIZE), _font(FONT_SIZE - 2)
    draw.text((left, 10), "Inference time per case during the drift run", fill="black", font=font)
    threads = result["threads"] or "default"
    draw.text(
        (left, 32), f"bar: median, dots: each of {len(result['cases'])} cases (forward + argmax on the brain box); "
        f"threads: {threads}\nthe first case of each precision includes OpenVINO's shape setup",
        fill=(90, 90, 90), font=small,
    )  # fmt: skip
    bottom = header + len(names) * (bar + gap)
    for k in range(ticks + 1):
        x = left + plot_width * k / ticks
        label = f"{step * k:g}"
        draw.line((x, header - 4, x, bottom), fill=(225, 225, 225))
        draw.text((x - draw.textlength(label, font=small) / 2, bottom + 4), label, fill="black", font=small)
    draw.text((left + plot_width / 2 - 60, bottom + 24), "seconds per case", fill="black", font=font)
    for i, name in enumerate(names):
        y = header + i * (bar + gap)
        median = float(np.median(seconds[name]))
        draw.rectangle((left, y, left + plot_width * median / top, y + bar), fill=PRECISION_COLOURS.get(name, "grey"))
        for value in seconds[name]:
            cx, cy = left + plot_width * value / top, y + bar / 2
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill="black", outline="white")
        draw.text((8, y + bar / 2 - FONT_SIZE / 2), name, fill="black", font=font)
        end = left + plot_width * max(median, *seconds[name]) / top
        draw.text((end + 10, y + bar / 2 - FONT_SIZE / 2), f"{median:.2f} s", fill="black", font=small)
    draw.line((left, header - 4, left, bottom), fill="black")
    return image


def _tick_step(largest: float) -> float:
    """A round axis step (1, 2, 2.5 or 5 times a power of ten): at most five steps cover ``largest``."""
    if largest <= 0:
        return 1.0
    power = 10.0 ** np.floor(np.log10(largest / 5))
    return next(power * m for m in (1, 2, 2.5, 5, 10) if power * m * 5 >= largest)


def _difference(flair: np.ndarray, reference: np.ndarray, compared: np.ndarray) -> np.ndarray:
    """RGB: a dimmed FLAIR with each disagreeing voxel coloured by how the two predictions differ."""
    rgb = np.repeat((flair // 2)[..., None], 3, axis=2)
    reference, compared = reference.T, compared.T  # voxel order (X, Y) -> display (rows Y, columns X)
    kinds = {
        "only_reference": (reference > 0) & (compared == 0),
        "only_compared": (compared > 0) & (reference == 0),
        "other_class": (reference > 0) & (compared > 0) & (reference != compared),
    }
    for kind, where in kinds.items():
        rgb[where] = DIFFERENCE_COLOURS[kind]
    return rgb


def _legend(draw: Any, entries: Sequence[tuple[str, tuple[int, int, int]]], origin: tuple[int, int], font: Any) -> None:
    x, y = origin
    for name, colour in entries:
        draw.rectangle((x, y + 1, x + FONT_SIZE - 2, y + FONT_SIZE - 1), fill=colour)
        draw.text((x + FONT_SIZE + 4, y), name, fill="white", font=font)
        x += FONT_SIZE + 4 + int(draw.textlength(name, font=font)) + 18


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _png_bytes(image: PILImage.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _facts(result: Mapping[str, Any]) -> list[str]:
    hints = ", ".join(
        f"{name}: {info['resolved'].get('INFERENCE_PRECISION_HINT')} hint, "
        f"{info['resolved'].get('INFERENCE_NUM_THREADS')} threads, {info['resolved'].get('NUM_STREAMS')} stream(s)"
        for name, info in result["precisions"].items()
    )
    return [
        f"bundle: {result['bundle']}",
        f"cases: {result['data_dir']} ({len(result['cases'])})",
        f"CPU: {result['cpu']}",
        f"resolved by OpenVINO: {hints}",
    ]


def _markdown(result: Mapping[str, Any], tables: Sequence[Table], figures: Sequence[tuple[str, str]]) -> str:
    lines = ["# Dice drift against fp32", "", *(f"- {fact}" for fact in _facts(result)), ""]
    for table in tables:
        lines += [f"## {table.title}", "", "| " + " | ".join(table.columns) + " |"]
        lines.append("|" + "|".join([":---"] + ["---:"] * (len(table.columns) - 1)) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in table.rows]
        lines += ["", f"_{table.caption}_" if table.caption else "", ""]
    lines += ["## Figures", ""]
    lines += [f"![{caption}]({name})\n" for name, caption in figures]
    return "\n".join(lines)


def _html(
    result: Mapping[str, Any], tables: Sequence[Table], figures: Sequence[tuple[str, str]], images: Mapping[str, bytes]
) -> str:
    """One HTML file with everything inline: no external stylesheet, script or image."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Dice drift against fp32</title>',
        "<style>body{font-family:sans-serif;margin:2em;max-width:1500px}"
        "table{border-collapse:collapse;margin:0.5em 0}th,td{border:1px solid #bbb;padding:2px 8px;"
        "text-align:right}th:first-child,td:first-child{text-align:left}caption{caption-side:bottom;"
        "color:#555;font-size:90%}img{max-width:100%;border:1px solid #ccc}</style></head><body>",
        "<h1>Dice drift against fp32</h1><ul>",
        *(f"<li>{esc(fact)}</li>" for fact in _facts(result)),
        "</ul>",
    ]
    for table in tables:
        parts.append(f"<h2>{esc(table.title)}</h2><table><caption>{esc(table.caption)}</caption><tr>")
        parts += [f"<th>{esc(column)}</th>" for column in table.columns]
        parts.append("</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in table.rows]
        parts.append("</table>")
    parts.append("<h2>Figures</h2>")
    for name, caption in figures:
        data = base64.b64encode(images[name]).decode("ascii")
        parts.append(
            f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
