"""Reports: the run's tables (tables; the experiments' own in experiments, their cells in
cells), its files (files) and pictures (plots), and the study that sets our figures beside
the published ones (study).

What the plugin and the command line call is handed on here.
"""

from .experiments import stress_sections
from .files import write_files
from .tables import SECTIONS, ab_table, exclusions_line, tables

__all__ = ["SECTIONS", "ab_table", "exclusions_line", "stress_sections", "tables", "write_files"]
