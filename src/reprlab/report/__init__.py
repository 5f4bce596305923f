"""Run directories: results.json, CSV tables, PNG plots, manifest and one report.html."""

from reprlab.report.rundir import RunDir, environment_versions

__all__ = ["RunDir", "environment_versions"]
