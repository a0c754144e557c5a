"""Base models: loading LLaVA (llava-hf layout) and CLIP from local folders, and converting the original
LLaVA-1.5 layout once."""
