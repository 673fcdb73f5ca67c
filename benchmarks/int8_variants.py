"""INT8 post-training variants of one bundle's models, scored as the build's gate scores them.

Each variant changes one step, from the bundle's own calibration cases and float layers: NNCF's
activation range rule (re-quantizing the float model), or the output bias correction applied to the
bundle's own int8 model. A candidate is an INT8 IR made elsewhere (``--candidate NAME=PATH``, e.g. by
``int8_distil.py``); its INT8 kernels are checked against the bundle's int8 on one small input.
Every variant and the bundle's own int8 are scored by `drift`'s measure in
segment's default tiling, on the labels segment writes (Dice ratio to fp32 with its 95 % interval,
agreement with fp32), on every folder given.

    python benchmarks/int8_variants.py --bundle models/bundle --eval runs/build32-heldout \
        --variant output-bias --out benchmarks/int8_variants_build32_heldout.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import openvino as ov

from latup_edge.data.cases import discover_cases
from latup_edge.data.labels import REGIONS
from latup_edge.deploy.build import built_from
from latup_edge.deploy.quantize.nncf_engine import quantize_nncf
from latup_edge.deploy.quantize.output_bias import correct_output_bias, with_output_offsets
from latup_edge.evaluate.drift import measure_drift, prepare_case
from latup_edge.runtime.bundle import INT8_PROBE, load_bundle
from latup_edge.runtime.openvino_backend import OpenVINOModel, int8_kernel_report
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, delivered_labels
from latup_edge.runtime.volume import box_forward

VARIANTS = ("extreme-ranges", "output-bias")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/bundle"))
    parser.add_argument("--eval", type=Path, action="append", default=[], help="a labelled folder to score on")
    parser.add_argument("--variant", action="append", choices=VARIANTS, default=[])
    parser.add_argument("--candidate", action="append", default=[], help="NAME=PATH of an INT8 IR to score too")
    parser.add_argument("--save", type=Path, help="folder to keep each variant's INT8 IR in")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    build = bundle.manifest["build"]
    _, samples = built_from(bundle)
    normalization = bundle.normalization
    float_model = args.bundle / "fp32.xml"

    shipped_int8 = bundle.manifest["precisions"]["int8"]["file"]
    models = {
        "fp32": OpenVINOModel(float_model, "fp32", threads=args.threads),
        "int8 bundle": OpenVINOModel(args.bundle / shipped_int8, "int8", threads=args.threads),
    }
    timings, corrections = {}, {}
    for name in args.variant:
        started = time.perf_counter()
        if name == "extreme-ranges":
            model = quantize_nncf(str(float_model), samples, build["keep_float"], activation_ranges="extreme")
        else:
            correction = correct_output_bias(models["fp32"], models["int8 bundle"], samples)
            corrections[name] = correction.to_dict()
            print(f"{name}: {corrections[name]}", file=sys.stderr)
            model = with_output_offsets(ov.Core().read_model(str(args.bundle / shipped_int8)), correction.offsets)
        timings[name] = time.perf_counter() - started
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            ov.save_model(model, str(args.save / f"int8_{name}.xml"), compress_to_fp16=False)
        models[f"int8 {name}"] = OpenVINOModel(model, "int8", threads=args.threads)
        print(f"quantized {name} in {timings[name]:.0f} s", file=sys.stderr)

    kernels = {}
    for spec in args.candidate:
        name, _, path = spec.partition("=")
        models[f"int8 {name}"] = OpenVINOModel(Path(path), "int8", threads=args.threads)
    for name, model in models.items():
        if name != "fp32":
            counted = kernels[name] = int8_kernel_report(model.compiled, (1, 3, *INT8_PROBE))
            print(f"{name}: {counted['int8_convolutions']} of {counted['convolutions']} convs INT8", file=sys.stderr)

    forwards = {name: box_forward(model) for name, model in models.items()}
    labels = delivered_labels(DEFAULT_POSTPROCESSING)
    results = {}
    for folder in args.eval:
        prepared = (prepare_case(case, normalization=normalization) for case in discover_cases(folder))
        results[str(folder)] = measure_drift(
            prepared, forwards, labels=labels, progress=lambda cid: print(cid, file=sys.stderr, flush=True)
        )
        # Written after each folder, so a long run keeps what it measured.
        report = {
            "bundle": str(args.bundle), "variants": args.variant, "seconds": timings,
            "output_bias": corrections, "candidates": args.candidate, "int8_kernels": kernels, "data": results,
        }  # fmt: skip
        args.out.write_text(json.dumps(report, indent=1))
    header = " ".join(f"{r + ' ratio [95 %]':>26s} {r + ' agr (min)':>16s}" for r in REGIONS)
    print(f"{'data':28s} {'int8':22s} {header}")
    for name, result in results.items():
        for precision, summary in result["summary"].items():
            if precision == "fp32":
                continue
            cells = []
            for r in REGIONS:
                row = summary["regions"][r]
                low, high = row.get("ratio_ci95") or (float("nan"), float("nan"))
                cells.append(f"{row['ratio']:.4f} [{low:.4f}-{high:.4f}]".rjust(26))
                cells.append(f"{row['agreement_mean']:.4f} ({row['agreement_min']:.3f})".rjust(16))
            print(f"{Path(name).name:28s} {precision.removeprefix('int8 '):22s} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
