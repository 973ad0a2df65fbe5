"""orchestrator: LLM-driven neural architecture search with feedback memory."""

__version__ = "0.1.0"
