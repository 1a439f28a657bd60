"""Hugging Face checkpoints in and out of prunelab, in one package.

- `checkpoint`: what every family shares and nothing family-specific: resolve a folder or hub id, read config.json
  and the weights (safetensors or torch, single or sharded), account for every key, copy tensors by a key map, and
  the files a run keeps of its source; `seq2seq`: what the encoder-decoder files share.
- `tokenizer` (`PretrainedTokenizer`, the data modules' one entry here) and `languages` (multilingual codes);
  `generation`: a checkpoint's own decoding settings.
- `family`: the written protocol a family module satisfies; `families`: the registry by config.json's model_type.
- one module per family, holding both directions (config.json -> TransformerConfig, the key map used to import
  and, inverted, to export): `encoders` (BERT, RoBERTa, ELECTRA, DistilBERT -> the gated classifier), `marian`,
  `t5`, `bart`, `m2m100` (-> the encoder-decoder Transformer), `causal_lm`, `opt`, `gpt_neox` (-> CausalLM).
- `export`: a pruned model folded back into dense weights and written as its family's Hugging Face folder.

Nothing here imports `transformers` except `PretrainedTokenizer` (and only when one is built)."""
