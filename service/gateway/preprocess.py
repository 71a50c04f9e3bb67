"""Former home of the preprocessing, now `service.preprocess` (the core: export checks use
it too). Re-exported here only for the benchmark and load-generator scripts that still
import this name; new code imports `service.preprocess`. Delete once nothing does."""

from __future__ import annotations

from service.preprocess import DRAFT_MARGIN, FORMATS, Preprocessor, preprocess, to_rgb

__all__ = ["DRAFT_MARGIN", "FORMATS", "Preprocessor", "preprocess", "to_rgb"]
