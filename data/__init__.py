"""The data pipeline: text sources -> GPT-2 tokens -> token files -> training and evaluation windows.

    config.py     DataConfig, the `data:` section of a run config
    tokenizer.py  load_tokenizer: GPT-2 byte-level BPE offline, or a hub tokenizer
    sources.py    documents from shakespeare, local .txt/.jsonl/.json/.parquet files or a hub dataset
    prepare.py    prepare / load_prepared: train.bin, val.bin, meta.json (also `python -m data.prepare`)
    loader.py     TrainWindows, val_windows, eval_batches, windows_fingerprint
    mqar.py       multi-query associative recall generated on the fly (source 'mqar'): MQARBatches, val_set,
                  val_fingerprint, answer_accuracy
    errors.py     DataError, raised for every problem the user fixes in the config or the files
"""
