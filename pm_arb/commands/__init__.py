"""What each CLI command does (LAYOUT.md layer 4): each computes a result, then renders it as text or `--json`."""

__all__ = ["bench", "books", "cli_params", "export_run", "inspect_run", "next_step", "plot", "reports", "run_dir", "runs", "slice_run", "time_input", "token_option", "verify"]
