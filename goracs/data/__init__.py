"""Data stage: raw files -> interactions and items tables -> Alpaca samples with splits and negatives."""
