"""Evaluation outputs: results.json (everything), results.md (the headline table) and one
per-class IoU plot per few-shot benchmark and shot count (plots/<benchmark>_<k>shot.png).

results: {"model", "config", "protocols": {name: text}, "benchmarks": {name: {"<k>-shot": scores}},
"video": {name: what segic_jax.evaluation.vos returned}}."""

from __future__ import annotations

import io
import os

from segic_jax import atomic_files


def _classes(summary: dict) -> dict[str, dict]:
    """Per-class scores of a summary, over all its folds (a class belongs to one fold)."""
    if "folds" in summary:
        return {c: v for fold in summary["folds"].values() for c, v in fold["classes"].items()}
    return summary["classes"]


def markdown(results: dict) -> str:
    model = results["model"]
    model = ", ".join(f"{k} {v}" for k, v in model.items()) if isinstance(model, dict) else model
    lines = [
        "# Evaluation results", "",
        f"Model: {model}", "",
        "| benchmark | setting | mIoU | FB-IoU | baseline mIoU | baseline FB-IoU | episodes |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, by_setting in results["benchmarks"].items():
        for setting, s in by_setting.items():
            lines.append(f"| {name} | {setting} | {s['miou']:.2f} | {s['fb_iou']:.2f} | {s['baseline_miou']:.2f} | "
                         f"{s['baseline_fb_iou']:.2f} | {s['episodes']} |")
            for fold, f in s.get("folds", {}).items():
                lines.append(f"| {name} fold {fold} | {setting} | {f['miou']:.2f} | {f['fb_iou']:.2f} | "
                             f"{f['baseline_miou']:.2f} | {f['baseline_fb_iou']:.2f} | {f['episodes']} |")
    for name, scores in results.get("video", {}).items():
        lines += ["", f"## {name}", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in scores.items()]
    lines += ["", "## Protocols", ""] + [f"- **{k}**: {v}" for k, v in results["protocols"].items()]
    return "\n".join(lines) + "\n"


def plot_classes(summary: dict, title: str) -> bytes:
    """PNG bytes: per-class IoU bars (sorted, best first) with the baseline's IoU as dots."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    classes = sorted(_classes(summary).values(), key=lambda v: -v["iou"])
    n = len(classes)
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.18 * n + 2), 40.0), 4.5))
    x = range(n)
    ax.bar(x, [c["iou"] for c in classes], color="#4878cf", label=f"SEGIC (mIoU {summary['miou']:.1f})")
    ax.plot(x, [c["baseline_iou"] for c in classes], ".", color="#d65f5f",
            label=f"propagated-mask baseline (mIoU {summary['baseline_miou']:.1f})")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU (%)")
    ax.set_title(title)
    if n <= 80:
        ax.set_xticks(list(x), [c["name"] for c in classes], rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{n} classes, sorted by IoU")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write(workdir: str, results: dict, plot: bool = True) -> list[str]:
    """Write the outputs (each file atomically); returns their paths."""
    written = [os.path.join(workdir, "results.json"), os.path.join(workdir, "results.md")]
    atomic_files.write_json(written[0], results)
    atomic_files.atomic_write_bytes(written[1], markdown(results).encode())
    if plot:
        for name, by_setting in results["benchmarks"].items():
            for setting, summary in by_setting.items():
                path = os.path.join(workdir, "plots", f"{name}_{setting.replace('-', '')}.png")
                atomic_files.atomic_write_bytes(path, plot_classes(summary, f"{name}, {setting}: per-class IoU"))
                written.append(path)
    return written
