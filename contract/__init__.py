"""The contract between the stages: what training/, build/, the served models and clients/ agree on.

Every stage imports this package; it imports none of them, and never torch, so a client installs
without torch, and every Python-backend version folder of a model repository carries a copy of it
beside model.py (build/repository_files.py copies it). What the served models import from here
needs only numpy, tokenizers and (ONNX models) onnxruntime; pandas, tritonclient and protobuf are
imported inside the functions that need them.

    names.py         tensor and model names (TEXT, TEXT_INPUTS, RAW_LOGITS, ...), defaults
                     (DEFAULT_MAX_LENGTH, MAX_POSITIONS, PAD_MULTIPLE, DEFAULT_CHUNK_ROWS)
    params.py        the served models' parameters, typed: TokenizerParams, ClassifierParams,
                     PostprocessParams (written into config.pbtxt, read back by the models)
    encoder.py       TextEncoder: the one tokenization with the serving padding rules
    postprocess.py   Postprocess: softmax / sigmoid, per-label thresholds, label names
    batching.py      requests -> one batch -> responses; length-sorted chunks
    served_classifier.py  the frame of every Python-backend classifier (params, batch, post-process, metrics)
    onnx_session.py  the ONNX Runtime session settings of a served ONNX model
    cpu.py           this CPU: name, cores, instruction sets (AVX2, AVX-512, VNNI, AMX), INT8 kernel
    bert_config.py   BertConfig: a checkpoint's config.json (labels, thresholds, sizes, FLOPs/token)
    data.py          DataSpec, TextDataset, the CSV loaders (pandas), DataError
    split.py         the 80/10/10 split: make_split, save_split, load_split (the split reader)
    metrics.py       the metrics our served models publish in Triton: names, help, buckets
    pbtxt.py         config.pbtxt <-> ModelConfig (tritonclient's model_config_pb2)
    repository_versions.py  a model repository's versions: the served one, the previous build kept
                     beside it with its model-folder files, the atomic swap, the rollback tree
    cli.py           `python -m <stage> <command>`: one shape, errors decided by class
    errors.py        UserError (one line, exit 2), Interrupted (exit 130)
    files.py         atomic file and folder writes, sha256
    tables.py        markdown tables for reports
"""
