"""ModalPrompt: continual instruction tuning of LLaVA with dual-modality guided prompts."""

__version__ = "0.1.0"
