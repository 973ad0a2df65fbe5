"""The Ollama transport (`client.py`) and the text of LLM replies (`text.py`)."""
