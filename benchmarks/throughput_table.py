"""The markdown table of benchmarks/train_throughput.py's rows (no torch import: gpu_check.py uses it too)."""

from __future__ import annotations


def _fmt(d: dict | None, key: str, spec: str) -> str:
    return format(d[key], spec) if d and key in d else "-"


def table(rows: list[dict], backends: list[str]) -> str:
    """One line per (row, backend), img/s beside CPU core-ms per image for every measurement; e2e over the
    ceiling of the same row, and over the `torch` backend's e2e of the same method and resolution (the same
    compile setting where measured, else eager)."""
    lines = ["| method | res | compile | aug | ceiling img/s | ceiling core-ms/img | backend | loader img/s | "
             "loader core-ms/img | e2e img/s | e2e core-ms/img | e2e / ceiling | e2e / torch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ceil = r.get("ceiling")
        same = [x for x in rows if x["method"] == r["method"] and x["res"] == r["res"] and "torch_e2e" in x]
        base = next((x for x in same if x["compile"] == r["compile"]), same[0] if same else None)
        for b in backends:
            e, ld = r.get(f"{b}_e2e"), r.get(f"{b}_loader")
            aug = "PIL" if b == "torch" else r.get("aug_impl", "auto")
            head = (f"| {r['method']} | {r['res']} | {r['compile']} | {aug} | {_fmt(ceil, 'img_per_s', '.0f')} | "
                    f"{_fmt(ceil, 'core_ms_per_img', '.2f')} | {b} |")
            if not e and not ld:
                why = r.get(f"{b}_error") or r.get("ceiling_error")
                if why:  # a backend the row did not ask for gets no line
                    lines.append(f"{head} - | - | n/a ({why[:60]}) | - | - | - |")
                continue
            ratio = f"{e['img_per_s'] / ceil['img_per_s']:.2f}" if e and ceil else "-"
            vs = f"{e['img_per_s'] / base['torch_e2e']['img_per_s']:.2f}x" if e and base else "-"
            lines.append(f"{head} {_fmt(ld, 'img_per_s', '.0f')} | {_fmt(ld, 'core_ms_per_img', '.2f')} | "
                         f"{_fmt(e, 'img_per_s', '.0f')} | {_fmt(e, 'core_ms_per_img', '.2f')} | {ratio} | {vs} |")
    return "\n".join(lines)
