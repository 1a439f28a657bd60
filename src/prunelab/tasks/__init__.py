from prunelab.tasks.classification import ClassificationTask
from prunelab.tasks.translation import TranslationTask

__all__ = ["ClassificationTask", "TranslationTask"]
