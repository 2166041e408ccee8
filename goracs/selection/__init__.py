"""Selection stage: a method sees a :class:`Pool` of arrays, a budget and a seed, and returns indices."""

from goracs.selection.pool import (ArrayFeatures, FeatureSource, Pool, SelectionResult, Selector, build_pool,
                                   check_budget, whole_pool)

__all__ = ["ArrayFeatures", "FeatureSource", "Pool", "SelectionResult", "Selector", "build_pool", "check_budget",
           "whole_pool"]
