"""The data (floor: data, above `models` and `hf`): one data module per task kind and source, built by Hydra from
`conf/data/`.

    base.py                 DataModule: the one shared __init__ (batch sizes, workers, seeds) and the tokenizer
    translation.py          TranslationDataModule and every translation source (synthetic, parallel files, datasets)
    classification.py       ClassificationDataModule and every classification source (synthetic, TSV, datasets)
    language_modeling.py    LanguageModelingDataModule and every language-modeling source (synthetic, text, datasets)
    sources/                where the text comes from: files, `datasets`, SentencePiece, the synthetic generators
    batching.py, windows.py  token batches (length buckets, DDP shards, exact resume); language-modeling windows
    tokenizer.py, splits.py  prunelab's own tokenizers; the validation-vs-test check"""
