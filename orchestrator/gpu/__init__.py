"""One GPU, two tenants: what the Ollama server holds on the candidates' GPU, and what each
candidate may use of the rest (`plan.py`), measured at start and watched during the run
(`residency.py`), from NVML (`memory.py`)."""
