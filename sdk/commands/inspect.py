"""``edgekit inspect MODEL``: format, inputs and outputs, op histogram, parameters, size, opset."""

from __future__ import annotations

from edgekit.inspect import inspect_model

from ._common import human_size, print_json, table


def register(sub) -> None:
    p = sub.add_parser("inspect", help="describe a model file or bundle")
    p.add_argument("model", help=".onnx, .tflite, .mlpackage, TVM .so/.json, or a bundle folder")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _spec(s: dict) -> str:
    dims = ", ".join("?" if d is None else str(d) for d in s["shape"])
    return f"  {s['name']}: {s['dtype']}[{dims}]"


def run(args) -> int:
    info = inspect_model(args.model)
    if args.json:
        print_json(info)
        return 0
    print(f"{info['path']}  ({info['format']}, {human_size(info['size'])})")
    for key in ("opset", "producer", "target", "spec_version", "edgekit_version"):
        if info.get(key):
            print(f"{key}: {info[key]}")
    if info.get("parameters") is not None:
        print(f"parameters: {info['parameters']:,}")
    print("inputs:")
    print("\n".join(_spec(s) for s in info.get("inputs", [])) or "  -")
    print("outputs:")
    print("\n".join(_spec(s) for s in info.get("outputs", [])) or "  -")
    if info.get("ops"):
        print(f"ops ({info.get('nodes', sum(info['ops'].values()))} nodes):")
        for op, n in info["ops"].items():
            print(f"  {op:<28} {n}")
    if info.get("variants"):
        rows = [dict(r, size=human_size(r["size"])) for r in info["variants"]]
        print(table(rows))
    if info.get("note"):
        print(f"note: {info['note']}")
    return 0
