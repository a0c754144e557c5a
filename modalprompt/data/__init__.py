"""Task data in CoIN's format: up-front validation of the files (`validation`, no torch) and the datasets,
conversation template and collator that feed the model (`datasets`)."""
