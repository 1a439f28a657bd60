"""Hugging Face checkpoints in and out of prunelab, in one package.

- `checkpoint`: what every family shares and nothing family-specific: resolve a folder or hub id, read config.json
  and the weights (safetensors or torch), account for every key, copy tensors by a key map, the checkpoint's own
  tokenizer (`PretrainedTokenizer`, the data modules' one entry here) and the files a run keeps of its source.
- one module per family, holding both directions (config.json -> TransformerConfig, the key map used to import
  and, inverted, to export): `encoders` (BERT, RoBERTa, ELECTRA, DistilBERT -> the gated classifier) and `marian`
  (MarianMT -> the encoder-decoder Transformer).
- `export`: a pruned model folded back into dense weights and written as its family's Hugging Face folder.

Nothing here imports `transformers` except `PretrainedTokenizer` (and only when one is built)."""
