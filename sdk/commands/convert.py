"""``edgekit convert SOURCE -o OUT``: quantize, prune, export, validate and write a bundle; summary table.

Exit status: 0 when every requested variant was built and validated; PARTIAL_EXIT (3) when the bundle was written
but some variant failed or missed its thresholds (one line each on stderr); 1 with no bundle when none was built.
"""

from __future__ import annotations

import sys

from ._common import human_size, print_json, table

#: exit status of a conversion whose bundle was written with some variant failed or not validated
PARTIAL_EXIT = 3


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert an ONNX model into a validated bundle of formats and precisions")
    p.add_argument("source", help="an .onnx file")
    p.add_argument("-o", "--output", required=True, help="bundle folder to write")
    p.add_argument("--to", dest="targets", help="formats, comma-separated: onnx,tflite,coreml (default: all usable)")
    p.add_argument("--quantize", help="precisions: fp32,fp16,int8-dynamic,int8 (default: fp32,fp16,int8; "
                                      "int8-dynamic instead of int8 without --calibration)")
    p.add_argument("--prune", action="append", help="0.5 (magnitude), 2:4 (N:M) or channels:0.3; repeatable")
    p.add_argument("--calibration", help=".npz with one [N, ...] array per input, or a folder of images")
    p.add_argument("--validation", help="held-out inputs to validate every variant on (same forms as "
                                        "--calibration; default: a quarter of the calibration data)")
    p.add_argument("--preprocess", help="for an image folder: size=224,mean=0.485/0.456/0.406,"
                                        "std=0.229/0.224/0.225,layout=NCHW,scale=0.00392")
    p.add_argument("--calibration-method", default="minmax", choices=["minmax", "entropy", "percentile",
                                                                       "distribution"])
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="static shape of an input for formats that need one (TFLite, Core ML, TVM), e.g. "
                        "images=1,3,320,320; repeatable (default: the shape of the validation data)")
    p.add_argument("--opset", type=int, help="upgrade the ONNX opset to N")
    p.add_argument("--cosine", type=float, default=0.99, help="validation threshold on cosine (default 0.99)")
    p.add_argument("--top1", type=float, default=0.98, help="top-1 agreement threshold for classifiers")
    p.add_argument("--no-retry", action="store_true", help="no accuracy-aware retry")
    p.add_argument("--retry-budget-s", type=float, default=120.0, metavar="SECONDS",
                   help="time budget of each variant's accuracy retry (default 120)")
    p.add_argument("--board", help="boards whose TVM kernels composites carry, comma-separated (e.g. rpi4,rpi5); "
                   "see `edgekit boards`")
    p.add_argument("--fallback-ops", help="op types forced onto TVM kernels, comma-separated (e.g. Softmax,Erf)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    p.add_argument("--json", action="store_true", help="print the manifest's variants as JSON")
    p.set_defaults(func=run)


def _split(value: str | None) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()] if value else []


def run(args) -> int:
    from edgekit.converters.pipeline import convert

    bundle = convert(args.source, args.output, targets=args.targets, quantize=args.quantize,
                     prune=args.prune, calibration=args.calibration, validation=args.validation,
                     preprocess=args.preprocess,
                     calibration_method=args.calibration_method, opset=args.opset, force=args.force,
                     cosine_threshold=args.cosine, top1_threshold=args.top1, accuracy_aware=not args.no_retry,
                     retry_budget_s=args.retry_budget_s,
                     progress=not args.json, boards=_split(args.board), fallback_ops=_split(args.fallback_ops),
                     input_shapes=args.input_shape, verbose=getattr(args, "verbose", False))
    rows = bundle.table()
    if args.json:
        print_json({"bundle": str(bundle.path), "variants": [v.to_json() for v in bundle.variants],
                    "failed": bundle.failed})
    else:
        cols = ["id", "format", "precision", "pruning", "size", "cosine", "top1", "max_abs", "check", "passed"]
        print(table([dict(r, size=human_size(r["size"])) for r in rows], cols))
        n_ok = sum(r["passed"] for r in rows)
        print(f"\n{len(rows)} variants built ({n_ok} passed validation), {len(bundle.failed)} failed, in "
              f"{bundle.path}; report: {bundle.path / 'report.md'}")
    return _partial_status(bundle)


def _partial_status(bundle) -> int:
    """0 when every variant validated; else one stderr line per failed or unvalidated variant and PARTIAL_EXIT."""
    lines = [f"edgekit: {f['variant']}: failed at {f['stage']}: {f['error']}: {f['message']}" for f in bundle.failed]
    lines += [f"edgekit: {v.id}: built but not validated ({_why(v.validation)})" for v in bundle.variants
              if not v.passed]
    for line in lines:
        print(line[:400], file=sys.stderr)
    return PARTIAL_EXIT if lines else 0


def _why(val: dict) -> str:
    decided = val.get("decided_by")
    if decided:
        return f"decided by {decided}"
    return f"cosine {val['cosine']:.4f}" if val.get("cosine") is not None else "below threshold"
