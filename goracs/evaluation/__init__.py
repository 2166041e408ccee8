"""Evaluation stage: BIGRec grounding + ranking metrics (SeqRec), TALLRec P(Yes) + AUC/logloss (CTR).

Entry point: ``from goracs.evaluation.evaluate import evaluate`` (not re-exported here, so that the name
``goracs.evaluation.evaluate`` always means the module).
"""
