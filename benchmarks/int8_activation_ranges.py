"""INT8 activation ranges under a shift of data: NNCF's default (each quantizer's range is the mean of
the calibration samples' minima and maxima) against the extremes over all samples.

Both are quantized from the bundle's own float model with the bundle's own calibration cases and
float layers, so the only difference is the range rule. Each is scored by `drift`'s measure (Dice
ratio to fp32, agreement with fp32) on every folder given: the build's held-out split, and data
from generators the build never saw.

    python benchmarks/int8_activation_ranges.py --bundle models/bundle \
        --eval runs/indep --eval runs/indep2 --out benchmarks/int8_activation_ranges.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from latup_edge.data.cases import discover_cases
from latup_edge.data.labels import REGIONS
from latup_edge.deploy.build import built_from
from latup_edge.deploy.quantize.nncf_engine import ACTIVATION_RANGES, quantize_nncf
from latup_edge.evaluate.drift import measure_drift, prepare_case
from latup_edge.runtime.bundle import load_bundle
from latup_edge.runtime.openvino_backend import OpenVINOModel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/bundle"))
    parser.add_argument("--eval", type=Path, action="append", default=[], help="another labelled folder")
    parser.add_argument("--save", type=Path, help="folder to keep each variant's INT8 IR in")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    build = bundle.manifest["build"]
    by_id, samples = built_from(bundle)
    normalization = bundle.normalization
    float_model = args.bundle / "fp32.xml"

    forwards = {"fp32": OpenVINOModel(float_model, "fp32")}
    timings = {}
    for ranges in ACTIVATION_RANGES:
        started = time.perf_counter()
        model = quantize_nncf(str(float_model), samples, build["keep_float"], activation_ranges=ranges)
        timings[ranges] = time.perf_counter() - started
        if args.save:
            import openvino as ov

            args.save.mkdir(parents=True, exist_ok=True)
            ov.save_model(model, str(args.save / f"int8_{ranges}.xml"), compress_to_fp16=False)
        forwards[f"int8 {ranges}"] = OpenVINOModel(model, "int8")
        print(f"quantized with {ranges} ranges in {timings[ranges]:.0f} s", file=sys.stderr)

    data_root = Path(build["calibration"]["data_root"])
    folders = {f"held-out split of {data_root.name}": [by_id[i] for i in build["held_out"]]}
    folders |= {str(folder): discover_cases(folder) for folder in args.eval}
    results = {}
    for name, cases in folders.items():
        prepared = (prepare_case(case, normalization=normalization) for case in cases)
        results[name] = measure_drift(prepared, forwards, progress=lambda cid: print(cid, file=sys.stderr))
        print(f"{name}: done", file=sys.stderr)

    args.out.write_text(
        json.dumps({"bundle": str(args.bundle), "quantize_seconds": timings, "data": results}, indent=1)
    )
    print(
        f"{'data':32s} {'ranges':8s} "
        + " ".join(f"{r + ' ratio':>9s} {r + ' agr':>7s} {r + ' min':>7s}" for r in REGIONS)
    )
    for name, result in results.items():
        for precision, summary in result["summary"].items():
            if precision == "fp32":
                continue
            cells = []
            for r in REGIONS:
                row = summary["regions"][r]
                ratio = f"{row['ratio']:9.4f}" if row.get("ratio") is not None else f"{'-':>9s}"
                cells.append(f"{ratio} {row['agreement_mean']:7.4f} {row['agreement_min']:7.4f}")
            print(f"{Path(name).name[:32]:32s} {precision[5:]:8s} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
