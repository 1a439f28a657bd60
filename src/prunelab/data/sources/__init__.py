"""Where a data module's text comes from (floor: data): the mixins and readers that the task kinds' data modules
(`data/translation.py`, `classification.py`, `language_modeling.py`) combine with their base.

    files       text files on disk (plain or .gz): lines, tab-separated examples, documents; the `TextFiles` mixin
    hf          data sets through Hugging Face `datasets`: the `HfDatasetSource` mixin
    subwords    the SentencePiece model trained on a source's training text (both mixins build on it)
    synthetic   the embedded generators: the synthetic language pair and the negation-scope task"""
