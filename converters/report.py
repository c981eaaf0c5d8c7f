"""report.md of a bundle: source, one table row per variant (with the output and metric that decided its
verdict), each output's figures for multi-output models, what was kept in float, skipped and failed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .validate import Thresholds

#: the figures a task metric adds to an output's record, in report order
TASK_FIGURES = ("top1", "pixel_agreement", "mask_iou", "det_class", "box_iou", "sequence")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _f(v, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


def _decided(v: Mapping) -> str:
    """The figure that decided a verdict: "`out`: metric value (>= threshold)"."""
    d = v.get("decided_by")
    if not d or d.get("metric") is None:
        return "-"
    op = "<=" if d["metric"] in ("rel_err", "mean_rel_err", "mismatch") else ">="
    return f"`{d['output']}`: {d['metric']} {_f(d.get('value'), '.4g')} ({op} {_f(d.get('threshold'), 'g')})"


def _threshold_line(thresholds: Mapping) -> str:
    t = {**vars(Thresholds()), **thresholds}
    return (f"- thresholds: cosine >= {t['cosine']} (samples with energy), top-1 agreement >= {t['top1']} "
            f"(class scores, decided rows), error / output range <= {t['rel_err']} (max) and "
            f"{t['mean_rel_err']} (mean), integer outputs exact (mismatch <= {t['mismatch']}); task metrics: "
            f"pixel agreement >= {t['pixel_agreement']}, text-mask IoU >= {t['mask_iou']}, detector class "
            f"agreement >= {t['det_class']} and box IoU >= {t['box_iou']}, CTC sequences >= {t['sequence']}")


def _variant_row(r: Mapping, fp32_size: int | None) -> str:
    v = r.get("validation") or {}
    ratio = f"{r['size'] / fp32_size:.2f}" if fp32_size and r.get("size") else "-"
    kept = ", ".join(v.get("kept_float") or []) or "-"
    if len(kept) > 60:
        kept = f"{len(v['kept_float'])} nodes"
    return (f"| {r['id']} | {r['format']} | {r['precision']} | {r.get('pruning') or '-'} | "
            f"{_size(r['size']) if r.get('size') else '-'} | {ratio} | {_f(v.get('cosine'), '.5f')} | "
            f"{_f(v.get('max_abs'), '.3g')} | {_f(v.get('mean_abs'), '.3g')} | {_f(v.get('top1'), '.3f')} | "
            f"{_decided(v)} | {v.get('method', '-')} | {'yes' if v.get('passed') else 'NO'} | {kept} | "
            f"{r.get('seconds', 0):.1f} s |")


def _output_rows(rows: Sequence[dict]) -> list[str]:
    """One line per output of every variant that has more than one output."""
    lines = []
    for r in rows:
        outs = (r.get("validation") or {}).get("outputs") or {}
        if len(outs) < 2:
            continue
        for name, f in outs.items():
            task = ", ".join(f"{k} {_f(f[k], '.3f')}" for k in TASK_FIGURES if k in f)
            if f.get("kind") == "int":
                task = f"mismatch {_f(f.get('mismatch'), '.4f')}"
            lines.append(f"| {r['id']} | `{name}` | {f.get('task') or f.get('kind', '-')} | "
                         f"{_f(f.get('cosine'), '.5f')} | {_f(f.get('cosine_min'), '.5f')} | "
                         f"{_f(f.get('rel_err'), '.3g')} | {_f(f.get('mean_rel_err'), '.3g')} | {task or '-'} | "
                         f"{'yes' if f.get('passed') else 'NO: ' + ', '.join(f.get('failed') or [])} |")
    if not lines:
        return []
    return ["", "## Outputs (variants with several outputs: each judged on its own)", "",
            "| variant | output | task | cosine | cosine min | rel err (max) | rel err (mean) | task figures "
            "| passed |", "|---|---|---|---|---|---|---|---|---|"] + lines


def _failed_rows(failed: Sequence[Mapping]) -> list[str]:
    if not failed:
        return []
    lines = ["", "## Failed", ""]
    for f in failed:
        node = f" (node `{f['node']}`)" if f.get("node") else ""
        raw = " (not an edgekit error: please report it)" if f.get("unexpected") else ""
        lines.append(f"- {f.get('variant', '?')}: {f.get('stage', '?')} failed{node}: {f.get('error', 'Error')}: "
                     f"{f.get('message', '')}{raw}")
    return lines


def render(source: str, source_kind: str, inputs: Sequence, outputs: Sequence, rows: Sequence[dict],
           notes: Sequence[str], skipped: Sequence[str], thresholds: dict, validation_data: str,
           total_s: float, fp32_size: int | None = None, failed: Sequence[dict] = ()) -> str:
    """Markdown text; ``rows`` hold id, format, precision, pruning, size, validation, seconds, error; ``failed``
    the variants that were not built (variant, stage, error class name, message, node where known)."""
    lines = [f"# edgekit conversion report: {source}", ""]
    lines += [f"- source: `{source}` ({source_kind})",
              f"- inputs: {', '.join(f'`{s}`' for s in inputs)}",
              f"- outputs: {', '.join(f'`{s}`' for s in outputs)}",
              f"- validation data: {validation_data}",
              _threshold_line(thresholds),
              f"- total conversion time: {total_s:.1f} s", ""]
    lines += ["## Variants", "",
              "| variant | format | precision | pruning | size | x fp32 | cosine | max abs | mean abs | top-1 "
              "| decided by | check | passed | kept in float | time |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_variant_row(r, fp32_size) for r in rows]
    lines += _output_rows(rows)
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
    lines += _failed_rows(failed)
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in skipped]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines.append("")
    return "\n".join(lines)
