from prunelab.tasks.classification import ClassificationTask
from prunelab.tasks.language_modeling import LanguageModelingTask
from prunelab.tasks.translation import TranslationTask

__all__ = ["ClassificationTask", "LanguageModelingTask", "TranslationTask"]
