"""Grids of experiments, the results database and its reports.

``unlearnable grid GRID.yaml --db results.db`` runs a grid (:mod:`.grid`) into a SQLite
database (:mod:`.store`); ``unlearnable report results.db`` prints its tables (:mod:`.report`).
"""

from .grid import Grid, grid_from_dict, load_grid, run_grid
from .report import defense_table, markdown_report, report_markdown, runs_csv
from .store import ResultsDB

__all__ = ["Grid", "ResultsDB", "defense_table", "grid_from_dict", "load_grid", "markdown_report", "report_markdown",
           "run_grid", "runs_csv"]
