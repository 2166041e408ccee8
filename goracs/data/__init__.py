"""Data stage: raw files -> interactions and items tables -> Alpaca samples with splits and negatives."""

from goracs.data.prepare import prepare_samples
from goracs.data.samples import SampleOptions, Samples, build_samples
from goracs.data.stats import sample_stats
from goracs.data.tables import Tables, TableSource, clean_tables

__all__ = ["prepare_samples", "sample_stats", "Samples", "SampleOptions", "build_samples", "Tables", "TableSource",
           "clean_tables"]
