"""Reports of the experiments: markdown tables, ``results.json``, PNG plots, a progress bar.

Plots need matplotlib (``pip install 'jaxreg[report]'``); without it the JSON and
markdown files are still written and the report says the plots were skipped.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import jax

from ..cpu import native_convolutions

COMPARE_COLUMNS = (
    ("config", "config", "{}"),
    ("train_acc", "train acc", "{:.4f}"),
    ("val_acc", "val acc", "{:.4f}"),
    ("test_acc", "test acc", "{:.4f}"),
    ("gap", "gap (train - test)", "{:+.4f}"),
    ("best_epoch", "best epoch", "{}"),
    ("epochs_run", "epochs run", "{}"),
    ("seconds", "wall time (s)", "{:.1f}"),
)


def _table(rows: list[dict[str, Any]], columns) -> str:
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"

    def cell(r, k, fmt):
        if r[k] is None:  # e.g. val_acc without a validation split
            return "-"
        text = fmt.format(r[k])
        return text + f" ± {r[k + '_std']:.4f}" if k + "_std" in r else text

    body = ["| " + " | ".join(cell(r, k, fmt) for k, _, fmt in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def compare_table(results: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`~jaxreg.experiments.runner.run_config` results."""
    return _table(results, COMPARE_COLUMNS)


def sweep_table(result: dict[str, Any]) -> str:
    """Markdown table of a :func:`~jaxreg.experiments.runner.run_sweep` result."""
    param = result["param"]
    columns = (
        (param, param, "{:g}"),
        *COMPARE_COLUMNS[1:6],
        ("stopped_epoch", "stopped at", "{}"),
    )
    return _table(result["members"], columns)


def picked_line(result: dict[str, Any]) -> str:
    """The sweep's pick in a sentence: value, validation accuracy (mean ± std over
    the folds of a cross-validation) and the runner-up's."""
    param, rows = result["param"], result["members"]
    best = next(r for r in rows if r[param] == result["picked"])
    folds = result.get("folds")
    acc = f"{best['val_acc']:.4f}" + (f" ± {best['val_acc_std']:.4f}" if folds else "")
    where = f"mean over {folds} folds" if folds else "validation split"
    others = sorted((r for r in rows if r is not best), key=lambda r: -r["val_acc"])
    runner_up = f"; next {param}={others[0][param]:g}: {others[0]['val_acc']:.4f}" if others else ""
    return f"Picked {param}={result['picked']:g}: val acc {acc} ({where}){runner_up}."


def cpu_model() -> str:
    """The CPU's model name, with its family, model and widest vector ISA on Linux
    (``/proc/cpuinfo``: "AMD EPYC" names several generations), else what
    ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = ""
    return describe_cpu(text) or platform.processor() or platform.machine()


def describe_cpu(cpuinfo: str) -> str:
    r"""``"<model name> (family F, model M, <ISA>)"`` from the first processor of a
    ``/proc/cpuinfo`` text; ``""`` without a model name. The ISA is ``AVX-512`` (the
    ``avx512f`` flag), ``AVX2`` or ``SSE/AVX``.

    Example:
      >>> describe_cpu("model name\t: AMD EPYC\ncpu family\t: 26\nmodel\t\t: 2\n"
      ...              "flags\t\t: fpu avx avx2 avx512f\n")
      'AMD EPYC (family 26, model 2, AVX-512)'
    """
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block only
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name", "")
    if not name:
        return ""
    flags = set(fields.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE/AVX"
    extra = [f"family {fields['cpu family']}"] if "cpu family" in fields else []
    extra += [f"model {fields['model']}"] if "model" in fields else []
    return f"{name} ({', '.join([*extra, isa])})"


def machine() -> dict[str, Any]:
    """Where the run happened (for the JSON record)."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(),
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "native_convolutions": native_convolutions(),
    }


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _curves(plt, path: Path, results, metric: str, label: str) -> None:
    n = len(results)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, r in zip(axes.flat, results, strict=False):
        hist = r["history"]
        epochs = range(1, len(hist) + 1)
        ax.plot(epochs, [h[metric] for h in hist], label="train")
        if hist and f"val_{metric}" in hist[0]:
            ax.plot(epochs, [h[f"val_{metric}"] for h in hist], label="val")
        ax.set_title(r["config"], fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].set_ylabel(label)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sweep_plot(plt, path: Path, result) -> None:
    param, rows = result["param"], result["members"]
    xs = [r[param] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("train_acc", "train"), ("val_acc", "val"), ("test_acc", "test")):
        if rows[0][key] is not None:  # no val_acc without a validation split
            ax.plot(xs, [r[key] for r in rows], marker="o", label=label)
    positive = [x for x in xs if x > 0]
    if param in ("l2", "weight_decay") and positive and max(positive) / min(positive) >= 100:
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xlabel(param)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{result['base_config']} + {param} sweep", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: str | Path, record: dict[str, Any]) -> list[Path]:
    """Write ``results.json``, ``report.md`` and the PNG plots of a compare or sweep record.

    ``record`` holds ``command`` (``"compare"`` or ``"sweep"``), ``settings`` and
    ``results`` (a list of config results, or one sweep result). Returns the paths written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {**record, "machine": machine()}
    written = [out / "results.json"]
    written[0].write_text(json.dumps(record, indent=2) + "\n")
    plt = _pyplot()
    settings = record["settings"]
    lines = [f"# jaxreg {record['command']}: {settings['dataset']}, model {settings['model']}", ""]
    lines.append("Command: `" + " ".join(["jaxreg", *record.get("argv", [])]) + "`")
    m = record["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, jax {m['jax']}.", ""]
    images: list[str] = []
    if record["command"] == "compare":
        results = record["results"]
        lines.append(compare_table(results))
        if plt is not None:
            _curves(plt, out / "accuracy.png", results, "accuracy", "accuracy")
            _curves(plt, out / "loss.png", results, "loss", "loss")
            images = ["accuracy.png", "loss.png"]
        lines += [
            "",
            "Train/val curves: training metrics are running means over each epoch "
            "(dropout and augmentation on); the table evaluates every split in eval mode.",
        ]
    else:
        result = record["results"]
        lines.append(sweep_table(result))
        if result.get("picked") is not None:
            lines += ["", picked_line(result)]
        folds = result.get("folds")
        lines += [
            "",
            f"One program{f' run on each of {folds} folds' if folds else ''}: "
            f"mode {result['mode']}, loop {result['loop']}, {result['seconds']:.1f} s.",
        ]
        if plt is not None:
            _sweep_plot(plt, out / "sweep.png", result)
            images = ["sweep.png"]
    lines.append("")
    if plt is None:
        lines.append("Plots skipped: matplotlib is not installed (pip install 'jaxreg[report]').")
    for name in images:
        lines.append(f"![{name}]({name})")
        written.append(out / name)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    written.insert(1, out / "report.md")
    return written


class Progress:
    """A one-line progress bar on ``stream`` (redrawn in place on a terminal).

    Off a terminal it prints one line per finished task instead of redrawing.
    """

    def __init__(self, total: int, label: str, *, stream: TextIO | None = None, width: int = 24):
        self.total, self.label, self.width = total, label, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.done = 0
        self.text = ""

    def update(self, done: int, info: str = "") -> None:
        self.done = done
        filled = round(self.width * done / max(1, self.total))
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.t0
        self.text = f"{self.label} [{bar}] {done}/{self.total} {info} {elapsed:.0f}s".rstrip()
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.text)
            self.stream.flush()

    def close(self, info: str = "") -> None:
        if info:
            self.update(self.done, info)
        self.stream.write(("\r\x1b[2K" if self.tty else "") + self.text + "\n")
        self.stream.flush()
