"""GORACS coreset selection: POO with exact or Sinkhorn OT, ITRA greedy + refinement, label-enhanced for CTR."""

from goracs.selection.goracs.selector import GoracsSelector

__all__ = ["GoracsSelector"]
