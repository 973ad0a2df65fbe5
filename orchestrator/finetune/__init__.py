"""NNGPT fine-tuning cycles: the corpus, LoRA training, and export to Ollama."""
