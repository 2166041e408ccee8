"""Model stage: backbones (causal LMs), LoRA adapters, tokenisation, the Lightning module and data module."""
