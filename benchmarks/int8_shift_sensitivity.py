"""Which quantized layers of a bundle's INT8 model drift on a folder of cases: the sensitivity search
of `build`, run on data the build never saw (issue 9, "the gate under shift").

For each network block (then each layer of the blocks that matter) the block's quantizers are
bypassed in the bundle's own INT8 model, and the labels are compared with the bundle's fp32 labels
on the chosen cases: the gain in agreement says how much of the drift that block causes. It also
prints each case's fp32 region sizes, since agreement on a region of a few hundred voxels moves
by whole percents when a few voxels flip.

    python benchmarks/int8_shift_sensitivity.py runs/indep --bundle models/bundle \
        --case BraTS-GLI-00004-000 ... --out benchmarks/int8_shift_sensitivity.json

This is a diagnosis: a fix it suggests must be checked on cases it did not look at.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import openvino as ov

from latup_edge.data.cases import discover_cases
from latup_edge.data.labels import REGIONS, region_masks
from latup_edge.deploy.quantize.graph import bypass, quantized_layers
from latup_edge.deploy.quantize.sensitivity import AgreementJudge, blocks_of, mean_per_region
from latup_edge.evaluate.drift import prepare_case
from latup_edge.runtime.bundle import load_bundle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--bundle", type=Path, default=Path("models/bundle"))
    parser.add_argument("--case", action="append", default=[], help="case id to judge on (default: all)")
    parser.add_argument("--min-gain", type=float, default=0.002, help="blocks below this gain get no per-layer look")
    parser.add_argument("--blocks-only", action="store_true", help="screen whole blocks, no per-layer look")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    cases = [c for c in discover_cases(args.data) if not args.case or c.case_id in args.case]
    prepared = [prepare_case(c, normalization=bundle.normalization) for c in cases]
    judge = AgreementJudge.from_float_model(args.bundle / "fp32.xml", prepared)
    int8 = ov.Core().read_model(str(args.bundle / "int8.xml"))
    sizes = {cid: {r: int(m.sum()) for r, m in region_masks(labels).items()} for cid, labels in judge.reference.items()}

    started = time.perf_counter()
    base_cases = judge.per_case(int8)
    base = mean_per_region(base_cases)
    print(f"fully int8 (as shipped): {base}", file=sys.stderr)
    rows = []
    layers = quantized_layers(int8)
    blocks = blocks_of(int8)

    result = {
        "bundle": str(args.bundle),
        "data": str(args.data),
        "cases": [c.case_id for c in prepared],
        "fp32_voxels": sizes,
        "int8": {"agreement": base, "cases": base_cases},
        "quantized_layers": len(layers),
        "rows": rows,
    }

    def measure(kind: str, name: str, bypassed: list[str]) -> dict:
        scores = judge.per_case(bypass(int8, bypassed))
        regions = mean_per_region(scores)
        row = {"kind": kind, "name": name, "layers": len(bypassed), "agreement": regions}
        row["gain"] = {r: regions[r] - base[r] for r in REGIONS}
        row["worst_gain"] = min(regions.values()) - min(base.values())
        row["cases"] = scores
        rows.append(row)
        result["seconds"] = time.perf_counter() - started
        args.out.write_text(json.dumps(result, indent=1))  # after every row: a stopped run keeps what it measured
        gains = " ".join(f"{r} {row['gain'][r]:+.4f}" for r in REGIONS)
        print(f"{kind:5s} {name:60s} {gains}  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
        return row

    # Every activation read in float: what is left is the weights' quantization.
    measure("all", "every activation (weights still int8)", layers)
    block_rows = [measure("block", block, members) for block, members in blocks.items()]
    harmful = [r["name"] for r in block_rows if max(r["gain"].values()) >= args.min_gain]
    for block in [] if args.blocks_only else harmful:
        for layer in blocks[block]:
            measure("layer", layer, [layer])

    print(f"{'case':22s} " + " ".join(f"{r + ' vox':>8s} {r + ' agr':>7s}" for r in REGIONS))
    for cid, scores in base_cases.items():
        print(f"{cid:22s} " + " ".join(f"{sizes[cid][r]:8d} {scores[r]:7.4f}" for r in REGIONS))
    print("\nfully int8: " + " / ".join(f"{base[r]:.4f}" for r in REGIONS))
    print(f"{'bypassed (float)':60s} {'WT':>8s} {'TC':>8s} {'ET':>8s}  gain in mean agreement")
    for row in sorted(rows, key=lambda r: -max(r["gain"].values())):
        print(f"{row['kind'] + ' ' + row['name']:60s} " + " ".join(f"{row['gain'][r]:+8.4f}" for r in REGIONS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
