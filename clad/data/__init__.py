"""LIBERO demonstrations -> preprocessed episode dataset -> training windows (plain Python, no Ray).

Contracts: libero_layout.py (input HDF5), episode_table.py (on-disk episode row), batch.py (training sample).

    hdf5_reader.py       find demo files, scan + validate a file (per-episode stats), read one episode
    validate.py          the checks and the Rejection record (file, demo, kind, reason)
    stats.py             mergeable per-dim moments -> stats.json
    split.py             seeded-hash train/val split by episode
    plan.py              scans -> image size, rejections, tasks, split, train stats
    convert.py           episodes -> Arrow tables (+ frozen-backbone feature columns)
    features.py          backbone protocol + registry (built-in: random_conv)
    language.py          offline MiniLM instruction embeddings
    manifest.py          input hashes, fingerprint, file names of the dataset folder
    outputs.py           metadata writers (stats/tasks/language/rejections/config/manifest)
    preprocess_config.py PreprocessConfig, FeatureBackboneConfig
    windows.py           episode row -> window samples for any tau / chunk
    store.py             pyarrow-only reader of a dataset folder (row group = episode)

The Ray layer is pipelines/preprocess.py (`clad preprocess`) and pipelines/dataset.py (streaming windows).
"""
