"""Running the linker over datasets: the resumable runner (and, later, metrics and reports)."""

from .runner import ResultWriter, read_results, run, run_one

__all__ = ["ResultWriter", "read_results", "run", "run_one"]
