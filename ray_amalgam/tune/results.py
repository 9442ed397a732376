"""A sweep's results in its output: every trial as Parquet and CSV, the report sorted by score,
the Pareto front of quality vs params, and `pareto.png`. Each file is written whole or not at all."""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ray_amalgam.io.fs import atomic_write_bytes, atomic_write_text, join, read_bytes, read_text
from ray_amalgam.spec.sweep import FIDELITY_PREFIX, subset_tasks
from ray_amalgam.tune.trial import ACCURACY_PREFIX

TRIALS_PARQUET = "trials.parquet"
TRIALS_CSV = "trials.csv"
REPORT_MD = "report.md"
PARETO_PNG = "pareto.png"
SUMMARY = "summary.json"
FINISHED_STATUS = "finished"


def pareto_front(rows: list[dict[str, Any]]) -> list[str]:
    """Trial ids of the finished trials no other finished trial beats on both quality (higher)
    and params (fewer) at once."""
    done = [r for r in rows if r["status"] == FINISHED_STATUS]

    def dominated(r: dict[str, Any]) -> bool:
        return any(
            o["quality"] >= r["quality"] and o["params"] <= r["params"] and (o["quality"] > r["quality"] or o["params"] < r["params"])
            for o in done
        )

    return [r["trial_id"] for r in done if not dominated(r)]


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished trials by score (best first), then the others by their last score."""
    return sorted(rows, key=lambda r: (r["status"] != FINISHED_STATUS, -(r.get("score") if r.get("score") is not None else float("-inf"))))


def _per_task(row: dict[str, Any]) -> str:
    cells = []
    for task in subset_tasks(row["tasks"]):
        fidelity, accuracy = row.get(f"{FIDELITY_PREFIX}{task}"), row.get(f"{ACCURACY_PREFIX}{task}")
        shown = "-" if fidelity is None else f"{fidelity:.3f}"
        cells.append(f"{task} {shown}" + ("" if accuracy is None else f" / {accuracy:.3f}"))
    return ", ".join(cells)


def _number(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


REPORT_COLUMNS = ["trial", "status", "tasks", "width", "score", "fidelity / accuracy per task", "params", "MFLOPs", "CPU ms/img", "pareto"]


def report_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The report's table body (markdown and rich share it), best first."""
    front = set(pareto_front(rows))
    return [[
        r["trial_id"], r["status"], r["tasks"], f"{r['width']:g}", _number(r.get("score"), ".3f"), _per_task(r),
        _number(r.get("params"), ","), _number(r["flops"] / 1e6 if r.get("flops") is not None else None, ".1f"),
        _number(r.get("latency_ms"), ".3f"), "*" if r["trial_id"] in front else "",
    ] for r in ranked(rows)]


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [
        f"# Sweep report: {summary['finished']} finished, {summary['stopped']} stopped early, {summary['errors']} failed",
        "",
        f"Metric: {summary['metric']}; teacher passes per sample for the whole sweep: {summary['teacher_passes_per_sample']:g}.",
        "Per task: fidelity to the teacher (eval data) / student accuracy where the eval data has labels. "
        "`*`: on the Pareto front of quality vs params.",
        "",
        "| " + " | ".join(REPORT_COLUMNS) + " |",
        "|" + "---|" * len(REPORT_COLUMNS),
        *("| " + " | ".join(cells) + " |" for cells in report_rows(rows)),
        "",
        f"![quality vs params]({PARETO_PNG})",
    ]
    return "\n".join(lines) + "\n"


def pareto_png(rows: list[dict[str, Any]]) -> bytes:
    """Quality vs params of the finished trials, each labelled by task subset and width; the
    front drawn as a line."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == FINISHED_STATUS]
    front = set(pareto_front(rows))
    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    others = [r for r in done if r["trial_id"] not in front]
    axes.scatter([r["params"] / 1e6 for r in others], [r["quality"] for r in others], color="0.6", label="trial")
    best = sorted((r for r in done if r["trial_id"] in front), key=lambda r: r["params"])
    axes.plot([r["params"] / 1e6 for r in best], [r["quality"] for r in best], "o-", color="tab:red", label="Pareto front")
    for r in done:
        axes.annotate(f"{r['tasks']} x{r['width']:g}", (r["params"] / 1e6, r["quality"]), fontsize=7,
                      textcoords="offset points", xytext=(4, 4), color="tab:red" if r["trial_id"] in front else "0.3")
    axes.set_xlabel("student params (M)")
    axes.set_ylabel("quality")
    axes.set_title("sweep: quality vs size")
    axes.legend(loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])


def write_trials(output: str, rows: list[dict[str, Any]]) -> None:
    """Every trial's config and final metrics, as Parquet and CSV."""
    table = _table(rows)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(join(output, TRIALS_PARQUET), sink.getvalue().to_pybytes())
    csv = io.BytesIO()
    pacsv.write_csv(table, csv)
    atomic_write_bytes(join(output, TRIALS_CSV), csv.getvalue())


def read_trials(output: str) -> list[dict[str, Any]]:
    return pq.read_table(io.BytesIO(read_bytes(join(output, TRIALS_PARQUET)))).to_pylist()


def write_report(output: str, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """Trials (Parquet, CSV), report.md, pareto.png and, last, summary.json."""
    write_trials(output, rows)
    atomic_write_text(join(output, REPORT_MD), markdown(rows, summary))
    atomic_write_bytes(join(output, PARETO_PNG), pareto_png(rows))
    atomic_write_text(join(output, SUMMARY), json.dumps(summary, indent=2, sort_keys=True, default=str))


def render_report(output: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Re-render report.md and pareto.png of a finished sweep from its output; (summary, trials)."""
    summary = json.loads(read_text(join(output, SUMMARY)))
    rows = read_trials(output)
    atomic_write_text(join(output, REPORT_MD), markdown(rows, summary))
    atomic_write_bytes(join(output, PARETO_PNG), pareto_png(rows))
    return summary, rows
