"""Cohorts: many cases in one run, here or on a Dask cluster, resumable, with a cohort table and an HTML report.

`inputs.discover` turns files, folders, a folder searched and a CSV manifest into cases; `run.run_cohort` runs
each one (`case.process_case`: skipped when done before with the same input and model hashes, isolated, with a
deadline), then writes `cohort.csv`, `cases.csv` (`tables`) and `report.html` (`report`) into the output folder.
"""
from .case import DONE, FAILED, SKIPPED, CaseRecord, process_case
from .inputs import CaseInput, discover
from .run import CohortRun, run_cohort

__all__ = ["DONE", "FAILED", "SKIPPED", "CaseInput", "CaseRecord", "CohortRun", "discover", "process_case",
           "run_cohort"]
