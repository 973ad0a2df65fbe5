"""The run journal under results/<name>/: writing and resuming (`journal.py`), reading
(`run.py`), the facts every reader derives from the records (`records.py`), crash-safe files."""
