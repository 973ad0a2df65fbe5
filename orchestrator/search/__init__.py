"""The closed loop: the LLM roles, prompts, feedback memory, candidate extraction, novelty,
scoring and failure classes; `loop.py` drives one iteration after another."""
