"""Reports: the comparison tables of a results database (Markdown and CSV).

The defense table has a row per defense and, after the clean victim's accuracy and its cost, a
column per protected set, ending with each set's recovered accuracy (the best defense on it: the
data owner's worst case). A database holding several data sets, recipes or architectures gets
one table for each, since their numbers do not compare.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .store import RUN_COLUMNS, ResultsDB


def _pct(v: Optional[float]) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def column_labels(records: Iterable[Dict[str, Any]]) -> Dict[Tuple[str, str, int], str]:
    """A column name per (method, budget, method seed) of protected records: the method, with
    the budget and seed added only where the records hold more than one of them."""
    cells = list(dict.fromkeys(_cell_of(r) for r in records if r["trained_on"] == "protected"))
    budgets: Dict[str, set] = {}
    seeds: Dict[str, set] = {}
    for m, b, s in cells:
        budgets.setdefault(m, set()).add(b)
        seeds.setdefault(m, set()).add(s)
    out = {}
    for m, b, s in cells:
        label = m + (f" @ {b}" if len(budgets[m]) > 1 else "") + (f" (seed {s})" if len(seeds[m]) > 1 else "")
        out[(m, b, s)] = label
    return out


def _cell_of(r: Dict[str, Any]) -> Tuple[str, str, int]:
    return (r.get("method") or "", r.get("budget") or "", int(r.get("method_seed", 0) or 0))


def defense_table(records: List[Dict[str, Any]], defenses: Optional[Sequence[str]] = None) -> str:
    """Markdown: a row per defense, the clean victim's accuracy, run seconds and cost relative
    to ``none``, then a column per protected set (mean ± sd over victim seeds), and a last row
    with each set's recovered accuracy.

    Args:
        records: audit records (:func:`unlearnable.audit.run_audit`); protected ones carry
            ``method`` (and, from a database, ``budget`` and ``method_seed``). Clean runs shared
            by several methods may appear more than once: they count once, by ``run_key``.
        defenses: row order (default: the order the records first name them).
    """
    from ..audit import recovered_accuracy, summarize

    unique = list({r.get("run_key") or id(r): r for r in records if r["trained_on"] == "clean"}.values())
    clean = {row["defense"]: row for row in summarize(unique)}
    labels = column_labels(records)
    prot_recs: Dict[Tuple[str, str, int], List[Dict[str, Any]]] = {c: [] for c in labels}
    for r in records:
        if r["trained_on"] == "protected":
            prot_recs[_cell_of(r)].append(r)
    prot = {c: {row["defense"]: row for row in summarize(rs)} for c, rs in prot_recs.items()}
    secs = {d: float(np.mean([r["seconds"] for r in unique if r["defense"] == d])) for d in clean}
    if defenses is None:
        defenses = list(dict.fromkeys(r["defense"] for r in records))

    def cell(row, on):
        if row is None or f"{on}_final" not in row:
            return "—"
        return _pct(row[f"{on}_final"]) + (f" ± {100 * row[f'{on}_sd']:.2f}" if row[f"{on}_n"] > 1 else "")

    base = secs.get("none")
    head = ["defense", "clean acc %", "clean run s", "× none"] + [f"{labels[c]} acc %" for c in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in defenses:
        ratio = f"{secs[d] / base:.2f}" if base and d in secs else "—"
        cells = [d, cell(clean.get(d), "clean"), f"{secs[d]:.1f}" if d in secs else "—", ratio]
        cells += [cell(prot[c].get(d), "protected") for c in labels]
        lines.append("| " + " | ".join(cells) + " |")
    rec = ["**recovered**", "", "", ""]
    for c in labels:
        best = recovered_accuracy(prot_recs[c])
        rec.append(f"{_pct(best['final_acc'])} ({best['defense']})" if best else "—")
    lines.append("| " + " | ".join(rec) + " |")
    return "\n".join(lines)


def _work(run: Optional[Dict[str, Any]]) -> str:
    """What an optimising method's run took (rounds, passes or steps), and whether it resumed."""
    if not run:
        return "—"
    parts = [f"{run[k]} {k}" for k in ("rounds", "passes", "steps") if run.get(k) is not None][:1]
    if run.get("resumed"):
        parts.append("resumed")
    return ", ".join(parts) or "—"


def generation_table(rows: List[Dict[str, Any]]) -> str:
    """Markdown: how each protected set was made (time, device, the rounds or passes it took,
    measured ℓ∞)."""
    lines = ["| method | budget | seed | images | seconds | device | work | measured ℓ∞ max (grey levels) |",
             "|---|---|---|---|---|---|---|---|"]
    for g in rows:
        lmax = "—" if g["linf_max"] is None else f"{g['linf_max']:.0f}"
        lines.append(f"| {g['method']} | {g['budget']} | {g['method_seed']} | {g['n_images']} | {g['seconds']:.1f} | "
                     f"{g['device']} | {_work(g['record'].get('run'))} | {lmax} |")
    return "\n".join(lines)


def report_markdown(db: ResultsDB, dataset: Optional[str] = None) -> str:
    """Every table the database holds: per data set, its generations, then a defense table per
    (recipe, architecture), with what the numbers are (credited accuracy on the clean test set)."""
    runs = db.runs(**({"dataset": dataset} if dataset else {}))
    if not runs:
        return "no runs stored" + (f" for data set {dataset!r}" if dataset else "") + "\n"
    out: List[str] = []
    for ds in dict.fromkeys(r["dataset"] for r in runs):
        out.append(f"## {ds}\n")
        gens = db.generations(dataset=ds)
        if gens:
            out.append("Protected sets:\n\n" + generation_table(gens) + "\n")
        mine = [r for r in runs if r["dataset"] == ds]
        groups: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
        for r in mine:
            groups.setdefault((r.get("recipe") or "?", r.get("arch") or "?"), []).append(r)
        for (recipe, arch), rs in groups.items():
            devices = sorted({r.get("device") or "?" for r in rs})
            seeds = sorted({r.get("seed") for r in rs if r.get("seed") is not None})
            epochs = sorted({len(r.get("curve") or []) for r in rs})
            out.append(f"### recipe {recipe}, {arch}\n")
            out.append(f"Victims: {len(rs)} runs, seeds {', '.join(map(str, seeds))}, "
                       f"{'/'.join(map(str, epochs))} epochs, on {'; '.join(devices)}. Accuracy on the clean test set "
                       "(final epoch; early-stop: its selected epoch); cells with several seeds are mean ± sd.\n")
            out.append(defense_table(rs) + "\n")
    return "\n".join(out)


def runs_csv(db: ResultsDB) -> str:
    """The runs table as CSV (one row per victim run; the full records stay in the database)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(RUN_COLUMNS), lineterminator="\n")
    w.writeheader()
    for row in db.run_table():
        w.writerow(row)
    return buf.getvalue()
