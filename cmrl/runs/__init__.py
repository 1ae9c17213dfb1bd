"""Layer 1, the run directory: the checkpoint format and run-directory facts (`checkpoint`),
metric keys and writers (`logger`), the status file of a run (`run_status`). Imports nothing
else from cmrl but `cmrl.config`."""
