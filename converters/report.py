"""report.md of a bundle: source, steps, one table row per variant, what was kept in float, what was skipped."""

from __future__ import annotations

from collections.abc import Sequence


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _f(v, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


def render(source: str, source_kind: str, inputs: Sequence, outputs: Sequence, rows: Sequence[dict],
           notes: Sequence[str], skipped: Sequence[str], thresholds: dict, validation_data: str,
           total_s: float, fp32_size: int | None = None) -> str:
    """Markdown text; ``rows`` hold id, format, precision, pruning, size, validation, seconds, error."""
    lines = [f"# edgekit conversion report: {source}", ""]
    lines += [f"- source: `{source}` ({source_kind})",
              f"- inputs: {', '.join(f'`{s}`' for s in inputs)}",
              f"- outputs: {', '.join(f'`{s}`' for s in outputs)}",
              f"- validation data: {validation_data}",
              f"- thresholds: cosine >= {thresholds['cosine']}, top-1 agreement >= {thresholds['top1']} "
              "(classifiers)",
              f"- total conversion time: {total_s:.1f} s", ""]
    lines += ["## Variants", "",
              "| variant | format | precision | pruning | size | x fp32 | cosine | max abs | mean abs | top-1 "
              "| check | passed | kept in float | time |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r.get("validation") or {}
        ratio = f"{r['size'] / fp32_size:.2f}" if fp32_size and r.get("size") else "-"
        kept = ", ".join(v.get("kept_float") or []) or "-"
        if len(kept) > 60:
            kept = f"{len(v['kept_float'])} nodes"
        lines.append(
            f"| {r['id']} | {r['format']} | {r['precision']} | {r.get('pruning') or '-'} | "
            f"{_size(r['size']) if r.get('size') else '-'} | {ratio} | {_f(v.get('cosine'), '.5f')} | "
            f"{_f(v.get('max_abs'), '.3g')} | {_f(v.get('mean_abs'), '.3g')} | {_f(v.get('top1'), '.3f')} | "
            f"{v.get('method', '-')} | {'yes' if v.get('passed') else 'NO'} | {kept} | {r.get('seconds', 0):.1f} s |")
    kept_rows = [r for r in rows if (r.get("validation") or {}).get("kept_float")]
    if kept_rows:
        lines += ["", "## Accuracy-aware retry", ""]
        for r in kept_rows:
            v = r["validation"]
            lines.append(f"- {r['id']}: kept {len(v['kept_float'])} node(s) in float/unpruned to reach the "
                         f"threshold: {', '.join(v['kept_float'])}")
    stems = [r for r in rows if (r.get("validation") or {}).get("float_stem")]
    if stems:
        lines += ["", "## Kept in float by the recipe", "",
                  f"- {', '.join(r['id'] for r in stems)}: the image stem "
                  f"({', '.join(stems[0]['validation']['float_stem'])}), few weights and little time but the "
                  "largest int8 error"]
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in skipped]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines.append("")
    return "\n".join(lines)
