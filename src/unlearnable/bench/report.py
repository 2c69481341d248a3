"""Reports: the comparison tables of a results database (Markdown and CSV).

The defense table has a row per defense and, after the clean victim's accuracy and its cost, a
column per protected set, ending with each set's recovered accuracy (the best defense on it: the
data owner's worst case). A database holding several data sets, recipes or architectures gets
one table for each, since their numbers do not compare.

Two data sets stored under the same label (two folders named ``cifar10``, told apart by their
content fingerprints) get a table each, their labels followed by a short fingerprint
(``cifar10 [data 1a2b3c4d]``); likewise two protected sets under one method label (two imported
poisons of the same name) get a column each, followed by a short hash of the poison
(``import:em-pt:p_em_class #1a2b3c4d``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .store import RUN_COLUMNS, ResultsDB


def _pct(v: Optional[float]) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


Cell = Tuple[str, str, int, str]


def column_labels(records: Iterable[Dict[str, Any]]) -> Dict[Cell, str]:
    """A column name per (method, budget, method seed, protected id) of protected records: the
    method, with the budget and seed added only where the records hold more than one of them,
    and a short hash of the protected set only where one label would name several sets."""
    cells = list(dict.fromkeys(_cell_of(r) for r in records if r["trained_on"] == "protected"))
    budgets: Dict[str, set] = {}
    seeds: Dict[str, set] = {}
    ids: Dict[Tuple[str, str, int], set] = {}
    for m, b, s, i in cells:
        budgets.setdefault(m, set()).add(b)
        seeds.setdefault(m, set()).add(s)
        ids.setdefault((m, b, s), set()).add(i)
    out = {}
    for m, b, s, i in cells:
        label = m + (f" @ {b}" if len(budgets[m]) > 1 else "") + (f" (seed {s})" if len(seeds[m]) > 1 else "")
        out[(m, b, s, i)] = label + (f" #{i[:8]}" if i and len(ids[(m, b, s)]) > 1 else "")
    return out


def _cell_of(r: Dict[str, Any]) -> Cell:
    return (r.get("method") or "", r.get("budget") or "", int(r.get("method_seed", 0) or 0),
            r.get("protected_id") or "")


def dataset_labels(runs: Iterable[Dict[str, Any]],
                   generations: Iterable[Dict[str, Any]] = ()) -> Dict[Tuple[str, str], str]:
    """The report's name per (stored data set label, data set fingerprint): the label, followed
    by a short fingerprint where one label names data sets of different content. Rows stored
    without a fingerprint (older databases) keep the bare label, and join the one data set of
    that label when there is only one."""
    fps: Dict[str, set] = {}
    for ds, fp in [(r["dataset"], r.get("dataset_fingerprint") or "") for r in runs] + \
            [(g["dataset"], _gen_fp(g)) for g in generations]:
        fps.setdefault(ds, set()).add(fp)
    out = {}
    for ds, found in fps.items():
        several = len(found - {""}) > 1
        for fp in found:
            out[(ds, fp)] = f"{ds} [data {fp[:8]}]" if several and fp else ds
    return out


def _gen_fp(g: Dict[str, Any]) -> str:
    return (g.get("record") or {}).get("dataset_fingerprint") or ""


def relabel(runs: List[Dict[str, Any]], generations: List[Dict[str, Any]]):
    """``runs`` and ``generations`` with ``dataset`` set to the report's name
    (:func:`dataset_labels`); the stored label stays in ``dataset_label``."""
    names = dataset_labels(runs, generations)
    runs = [{**r, "dataset_label": r["dataset"],
             "dataset": names[(r["dataset"], r.get("dataset_fingerprint") or "")]} for r in runs]
    generations = [{**g, "dataset_label": g["dataset"], "dataset": names[(g["dataset"], _gen_fp(g))]}
                   for g in generations]
    return runs, generations


def select(db: ResultsDB, dataset: Optional[str] = None):
    """The database's ``(runs, generations)`` under the report's data set names, only those of
    ``dataset`` if given (a report name, or a stored label: all data sets of that label).

    Raises:
        UnlearnableError: ``dataset`` names no data set the database holds runs for; the
            message lists those it holds.
    """
    from ..errors import UnlearnableError

    every, gens = relabel(db.runs(), db.generations())
    if dataset is None:
        return every, gens
    runs = [r for r in every if dataset in (r["dataset"], r["dataset_label"])]
    gens = [g for g in gens if dataset in (g["dataset"], g["dataset_label"])]
    if not runs:
        held = list(dict.fromkeys(r["dataset"] for r in every))
        raise UnlearnableError(f"{db.path} has no data set {dataset!r}; "
                               + (f"it holds: {', '.join(held)}" if held else "it holds no runs"))
    return runs, gens


@dataclass
class TableData:
    """The numbers of a defense table, for Markdown and for plots alike.

    Attributes:
        defenses: row order.
        columns: column labels, one per protected set (:func:`column_labels`).
        clean: per defense, the clean victims' :func:`~unlearnable.audit.summarize` row.
        protected: per column, per defense, the protected victims' summary row.
        seconds: per defense, the clean victims' mean run seconds.
        recovered: per column, :func:`~unlearnable.audit.recovered_accuracy` (None without runs).
    """

    defenses: List[str]
    columns: List[str]
    clean: Dict[str, Dict[str, Any]]
    protected: Dict[str, Dict[str, Dict[str, Any]]]
    seconds: Dict[str, float]
    recovered: Dict[str, Optional[Dict[str, Any]]]


def table_data(records: List[Dict[str, Any]], defenses: Optional[Sequence[str]] = None) -> TableData:
    """Summarise audit records into a :class:`TableData`.

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
    prot_recs: Dict[str, List[Dict[str, Any]]] = {label: [] for label in labels.values()}
    for r in records:
        if r["trained_on"] == "protected":
            prot_recs[labels[_cell_of(r)]].append(r)
    return TableData(
        defenses=list(defenses) if defenses is not None else list(dict.fromkeys(r["defense"] for r in records)),
        columns=list(prot_recs), clean=clean,
        protected={c: {row["defense"]: row for row in summarize(rs)} for c, rs in prot_recs.items()},
        seconds={d: float(np.mean([r["seconds"] for r in unique if r["defense"] == d])) for d in clean},
        recovered={c: recovered_accuracy(rs) for c, rs in prot_recs.items()})


def defense_table(records: List[Dict[str, Any]], defenses: Optional[Sequence[str]] = None) -> str:
    """Markdown: a row per defense, the clean victim's accuracy, run seconds and cost relative
    to ``none``, then a column per protected set (mean ± sd over victim seeds), and a last row
    with each set's recovered accuracy. Arguments as :func:`table_data`.
    """
    t = table_data(records, defenses)

    def cell(row, on):
        if row is None or f"{on}_final" not in row:
            return "—"
        return _pct(row[f"{on}_final"]) + (f" ± {100 * row[f'{on}_sd']:.2f}" if row[f"{on}_n"] > 1 else "")

    base = t.seconds.get("none")
    head = ["defense", "clean acc %", "clean run s", "× none"] + [f"{c} acc %" for c in t.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in t.defenses:
        ratio = f"{t.seconds[d] / base:.2f}" if base and d in t.seconds else "—"
        cells = [d, cell(t.clean.get(d), "clean"), f"{t.seconds[d]:.1f}" if d in t.seconds else "—", ratio]
        cells += [cell(t.protected[c].get(d), "protected") for c in t.columns]
        lines.append("| " + " | ".join(cells) + " |")
    rec = ["**recovered**", "", "", ""]
    for c in t.columns:
        best = t.recovered[c]
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


def _groups(runs: List[Dict[str, Any]]) -> Dict[Tuple[str, str, str], List[Dict[str, Any]]]:
    """Runs per (data set, recipe, architecture): the numbers that compare with each other."""
    groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], r.get("recipe") or "?", r.get("arch") or "?"), []).append(r)
    return groups


def markdown_report(runs: List[Dict[str, Any]], generations: List[Dict[str, Any]], level: int = 2) -> str:
    """Per data set, how its protected sets were made, then a defense table per (recipe,
    architecture), with what the numbers are (credited accuracy on the clean test set).

    Args:
        runs: run records with their cells (:meth:`ResultsDB.runs`, or a grid's ``records``).
        generations: generation rows (:meth:`ResultsDB.generations`).
        level: Markdown heading level of a data set (its recipes one below), so the report
            can sit inside another document.
    """
    if any("dataset_label" not in r for r in runs):  # not relabelled yet (a grid's own records)
        runs, generations = relabel(runs, generations)
    groups = _groups(runs)
    if not groups:
        return "no runs\n"
    out: List[str] = []
    for ds in dict.fromkeys(k[0] for k in groups):
        out.append(f"{'#' * level} {ds}\n")
        gens = [g for g in generations if g["dataset"] == ds]
        if gens:
            out.append("Protected sets:\n\n" + generation_table(gens) + "\n")
        for (d, recipe, arch), rs in groups.items():
            if d != ds:
                continue
            devices = sorted({r.get("device") or "?" for r in rs})
            seeds = sorted({r.get("seed") for r in rs if r.get("seed") is not None})
            epochs = sorted({len(r.get("curve") or []) for r in rs})
            out.append(f"{'#' * (level + 1)} recipe {recipe}, {arch}\n")
            out.append(f"Victims: {len(rs)} runs, seeds {', '.join(map(str, seeds))}, "
                       f"{'/'.join(map(str, epochs))} epochs, on {'; '.join(devices)}. Accuracy on the clean test set "
                       "(final epoch; early-stop: its selected epoch); cells with several seeds are mean ± sd.\n")
            out.append(defense_table(rs) + "\n")
    return "\n".join(out)


def report_markdown(db: ResultsDB, dataset: Optional[str] = None) -> str:
    """:func:`markdown_report` of everything the database holds (for ``dataset``, if given).

    Raises:
        UnlearnableError: ``dataset`` is not one the database holds (see :func:`select`).
    """
    runs, gens = select(db, dataset)
    if not runs:
        return "no runs stored\n"
    return markdown_report(runs, gens)


#: The formats ``--plot`` writes, by file extension (what matplotlib's savefig writes).
PLOT_FORMATS = ("png", "svg", "pdf")


def plot_format(path) -> str:
    """The plot format ``path``'s extension names.

    Raises:
        UnlearnableError: an extension that is not one of :data:`PLOT_FORMATS`.
    """
    from pathlib import Path

    from ..errors import UnlearnableError

    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in PLOT_FORMATS:
        raise UnlearnableError(f"cannot plot to {path}: name a .png, .svg or .pdf file "
                               f"(the extension picks the format)")
    return ext


def bar_styles(n_columns: int) -> List[Dict[str, Any]]:
    """``ax.bar`` styles of the clean series and then ``n_columns`` protected sets: clean is
    white with black hatching, the methods take colours that are neither grey nor repeated
    (up to 18 of them)."""
    import matplotlib

    palette = [c for c in matplotlib.colormaps["tab10"].colors if len(set(c)) > 1]  # drop tab10's grey
    if n_columns > len(palette):
        palette = [c for c in matplotlib.colormaps["tab20"].colors if len(set(c)) > 1]
    styles = [{"color": "white", "edgecolor": "black", "hatch": "///", "linewidth": 0.6}]
    styles += [{"color": palette[j % len(palette)]} for j in range(n_columns)]
    return styles


def plot_report(db: ResultsDB, path, dataset: Optional[str] = None) -> int:
    """Bar charts of the defense tables: per (data set, recipe, architecture) one panel, a group
    of bars per defense — the clean victim, then each protected set — with ± sd over victim
    seeds as error bars. Returns the number of panels.

    Raises:
        UnlearnableError: matplotlib is missing, the folder of ``path`` does not exist, or the
            database holds no runs (for ``dataset``).
    """
    from ..data.save import atomic_write, check_writable
    from ..errors import UnlearnableError
    from ..plotting import pyplot

    fmt = plot_format(path)
    plt = pyplot("--plot")
    p = check_writable(path)
    groups = _groups(select(db, dataset)[0])
    if not groups:
        raise UnlearnableError(f"{db.path} holds no runs" + (f" for data set {dataset!r}" if dataset else "")
                               + ": nothing to plot")
    fig, axes = plt.subplots(len(groups), 1, figsize=(11, 3.6 * len(groups)), dpi=100, squeeze=False)
    try:
        for ax, ((ds, recipe, arch), rs) in zip(axes[:, 0], groups.items()):
            t = table_data(rs)
            series = [("clean", t.clean, "clean")] + [(c, t.protected[c], "protected") for c in t.columns]
            width = 0.8 / len(series)
            x = np.arange(len(t.defenses))
            for j, ((name, rows, on), style) in enumerate(zip(series, bar_styles(len(t.columns)))):
                mean = [100 * rows[d][f"{on}_final"] if d in rows else np.nan for d in t.defenses]
                sd = [100 * rows[d][f"{on}_sd"] if d in rows else 0.0 for d in t.defenses]
                ax.bar(x + (j - (len(series) - 1) / 2) * width, mean, width, yerr=sd, label=name,
                       capsize=2 if any(sd) else 0, **style)
            ax.set_xticks(x)
            ax.set_xticklabels(t.defenses, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(0, 100)
            ax.set_ylabel("clean test accuracy %")
            ax.set_title(f"{ds} — recipe {recipe}, {arch}", fontsize=10)
            ax.legend(fontsize=7, ncol=min(4, len(series)), loc="upper right")
        fig.tight_layout()
        atomic_write(p, lambda f: fig.savefig(f, format=fmt))
    finally:
        plt.close(fig)
    return len(groups)


def runs_csv(db: ResultsDB) -> str:
    """The runs table as CSV (one row per victim run; the full records stay in the database)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(RUN_COLUMNS), lineterminator="\n")
    w.writeheader()
    for row in db.run_table():
        w.writerow(row)
    return buf.getvalue()
