"""The paper's reported results, to print beside a run's own.

Source: Gu, Ignatov, Timofte, "Resource-Efficient Iterative LLM-Based NAS with Feedback
Memory", arXiv 2603.12091, Table 2 (one-epoch proxy accuracy on the test set, 2000 iterations
for DeepSeek-Coder-6.7B-Instruct and Qwen2.5-7B-Instruct, 100 for GLM-5). The text reports a
significant Spearman rho and Kendall tau for every pair, but their values are not legible in
the copy of the paper kept with this project (../shared/seeds), so they are not given here.
"""

from __future__ import annotations

SOURCE = "Gu, Ignatov, Timofte, arXiv 2603.12091, Table 2"
MODELS = {"deepseek": "DeepSeek-Coder-6.7B", "qwen": "Qwen2.5-7B", "glm": "GLM-5"}

# dataset -> paper model -> (iterations, successful, first accuracy, best accuracy)
TABLE2: dict[str, dict[str, tuple[int, int, float, float]]] = {
    "cifar10": {"deepseek": (2000, 1519, 0.282, 0.692), "qwen": (2000, 376, 0.500, 0.715),
                "glm": (100, 91, 0.432, 0.620)},
    "cifar100": {"deepseek": (2000, 1902, 0.050, 0.292), "qwen": (2000, 1064, 0.270, 0.296),
                 "glm": (100, 85, 0.191, 0.248)},
    "imagenette": {"deepseek": (2000, 13, 0.467, 0.615), "qwen": (2000, 642, 0.230, 0.546),
                   "glm": (100, 81, 0.411, 0.583)},
}


def family(model: str | None) -> str | None:
    """The paper's model of the same family as an Ollama model name, if any:
    deepseek-coder:6.7b-instruct -> deepseek, qwen2.5:7b -> qwen (not qwen2.5-coder), glm* ->
    glm."""
    name = (model or "").lower()
    if name.startswith("deepseek-coder"):
        return "deepseek"
    if name.startswith("qwen2.5") and not name.startswith("qwen2.5-coder"):
        return "qwen"
    return "glm" if name.startswith("glm") else None


def paper_rows(dataset: str | None, model: str | None) -> list[dict]:
    """The paper's Table 2 entries for a dataset: the generator's family only when the paper
    ran it, else every model it ran; [] for a dataset the paper did not use."""
    entries = TABLE2.get((dataset or "").lower().replace("-", ""), {})
    chosen = family(model)
    keys = [chosen] if chosen in entries else list(entries)
    return [{"model": MODELS[k], "iterations": entries[k][0], "successful": entries[k][1],
             "success_rate": entries[k][1] / entries[k][0], "first_accuracy": entries[k][2],
             "best_accuracy": entries[k][3], "spearman_rho": None, "kendall_tau": None}
            for k in keys]
