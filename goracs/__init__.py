"""goracs: coreset selection for fine-tuning LLM-based recommenders."""
