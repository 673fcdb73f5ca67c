"""T1ce's own voxels against a 1 mm model grid: the same studies segmented both ways, scored on T1ce's grid.

Every series of a case is acquired on one axis-aligned grid of ``--spacing`` mm (no head motion,
nothing to register; ``scans/clinic_like.py``), so the only difference between the two runs is
where the network runs: on those voxels as they are (``geometry.OWN_VOXELS_MM`` opened to any
spacing) or on a 1 mm grid over their field of view with the labels moved back (``OWN_VOXELS_MM``
closed to exactly 1 mm: the behaviour before 2026-12-05). The default range, 0.88-1 mm, was set from
this script's table: kept voxels won at 0.88 mm and lost at 1.12 mm.

    latup-edge phantom runs/clinic-narrow --n 10 --seed 2500 --randomise none
    python benchmarks/own_voxels.py --cases runs/clinic-narrow --work runs/own-voxels --spacing 0.88 1.12 \\
        --out benchmarks/own_voxels.json
"""

from __future__ import annotations

import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import latup_edge.scans.geometry as geometry
from latup_edge.data.cases import discover_cases
from latup_edge.fileio import atomic_write_json
from latup_edge.runtime.predictor import Predictor
from latup_edge.runtime.segment import SegmentSettings, segment_cases
from latup_edge.scans.clinic_like import case_volumes, clinic_series

sys.path.insert(0, str(Path(__file__).parent))
from clinic_input import _labels, _region_dice, _write_nifti_study, study_arguments  # noqa: E402

FORMAT = "latup-edge-own-voxels/1"
AXIAL = (1, 0, 0, 0, 1, 0, 0, 0, 1)
PATHS = (("own voxels", (0.0, 100.0)), ("1 mm grid", (1.0, 1.0)))  # (name, OWN_VOXELS_MM)


def main(argv: list[str] | None = None) -> int:
    parser = study_arguments(__doc__)
    parser.add_argument("--spacing", type=float, nargs="+", default=[0.9], help="isotropic spacings (mm) to try")
    args = parser.parse_args(argv)
    cases = discover_cases(args.cases)[: args.n]
    if args.work.exists():
        shutil.rmtree(args.work)
    predictor = Predictor.open("openvino", args.precision, args.bundle, threads=args.threads)
    default = geometry.OWN_VOXELS_MM
    rows = []
    for spacing in args.spacing:
        grid = {"spacing": (spacing,) * 3, "direction": AXIAL}
        study, truths = args.work / f"study-{spacing}", {}
        for index, case in enumerate(cases):
            images, labels = case_volumes(case)
            series, truth = clinic_series(images, labels, seed=index, mm=0.0, degrees=0.0,
                                          acquisitions=dict.fromkeys(images, grid))  # fmt: skip
            _write_nifti_study(series, study / case.case_id, case.case_id)
            truths[case.case_id] = sitk.GetArrayFromImage(truth.labels_native).transpose(2, 1, 0)
        for name, voxels in PATHS:
            geometry.OWN_VOXELS_MM = voxels
            try:
                log = segment_cases([study], args.work / f"out-{spacing}-{name.split()[0]}", SegmentSettings(),
                                    predictor=predictor)  # fmt: skip
            finally:
                geometry.OWN_VOXELS_MM = default
            dice = [_region_dice(_labels(Path(e["outputs"][0])), truths[e["case_id"]])
                    for e in log["cases"] if e["status"] == "ok"]  # fmt: skip
            mean = {r: round(float(np.mean([d[r] for d in dice])), 4) for r in ("WT", "TC", "ET")}
            rows.append({"spacing_mm": spacing, "path": name, "cases": len(dice), "dice": mean})
            print(f"{spacing} mm, {name}: {mean}", file=sys.stderr)
    print("| spacing mm | network runs on | Dice WT / TC / ET |")
    print("|---|---|---|")
    for row in rows:
        d = row["dice"]
        print(f"| {row['spacing_mm']} | {row['path']} | {d['WT']:.4f} / {d['TC']:.4f} / {d['ET']:.4f} |")
    if args.out:
        result = {"format": FORMAT, "measured": datetime.now(UTC).isoformat(timespec="seconds"),
                  "bundle": str(predictor.bundle.path if predictor.bundle else None),
                  "precision": predictor.precision, "rows": rows}  # fmt: skip
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
