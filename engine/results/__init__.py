"""The results layer: what finished work means, for people.

The paper's table with paired statistics (`report`), exports (`export`), `show`'s view of a run
(`overview`), the task similarity document (`analysis`) and the authors' reported numbers (`reference`). It may import the base, experiment and
store layers; no torch.
"""

from engine.results.analysis import (KINDS, AnalysisError, analysis_request, check_analysable, check_together,
                                     read_analysis, render_text, request_analysis, run_part)
from engine.results.export import EXTENSIONS, FORMATS, export_document, load_analyses
from engine.results.overview import json_safe, overview, partial_note, run_plan
from engine.results.reference import (FT_LABEL, FULL_FINETUNING, Comparison, ReferenceError, ReferenceTable, compare,
                                      difference_text, identity_text, method_label, reference_for, reference_names,
                                      reference_notes, reference_rows, reference_table, reported_mean_text, reported_text)
from engine.results.report import (DELTA_LABEL, P_LABEL, PAIRED_EXPLANATION, Column, Report, build_report,
                                   delta_text, format_duration, gain_text, mean_text, means_line, p_text,
                                   paired_line, prepare_statistics, score_text)

__all__ = ["Comparison", "FT_LABEL", "FULL_FINETUNING", "ReferenceError", "ReferenceTable", "compare",
           "difference_text", "identity_text", "method_label", "reference_for", "reference_names", "reference_notes",
           "reference_rows",
           "reference_table", "reported_mean_text", "reported_text",
           "DELTA_LABEL", "EXTENSIONS", "FORMATS", "KINDS", "PAIRED_EXPLANATION", "P_LABEL", "AnalysisError", "Column", "analysis_request",
           "check_analysable", "request_analysis",
           "Report", "build_report", "check_together", "delta_text", "export_document", "format_duration",
           "gain_text", "json_safe", "load_analyses", "mean_text", "means_line", "overview", "p_text",
           "paired_line", "partial_note", "prepare_statistics", "read_analysis", "render_text", "run_part", "run_plan",
           "score_text"]
