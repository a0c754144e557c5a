"""The method's parts, shared by every prompt method: per-task prompts and key networks (`prompts`), pure
score and top-k functions (`selection`), and the wrapper around the frozen LLaVA (`wrapper`)."""
