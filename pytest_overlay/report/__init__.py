"""Reports: the run's tables (tables), its files and pictures (plots), and the study that
sets our figures beside the published ones (study).

What the plugin and the command line call is handed on here.
"""

from .tables import SECTIONS, exclusions_line, stress_sections, tables, write_files

__all__ = ["SECTIONS", "exclusions_line", "stress_sections", "tables", "write_files"]
