"""Task formats: loaders from native files to Items, few-shot prompts, perturbations."""
