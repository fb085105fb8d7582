"""One batch from all the requests of one execute() call, and the responses back.

Used by every Python-backend classifier (ONNX Runtime and PyTorch) and by the benchmark's
in-process baseline, which runs the graph exactly as the served model does. Triton's
dynamic batcher hands execute() several requests; running them as one batch is the point of
batching. They normally share one sequence length (the tokenizer pads each of its executions to
one length), but a client may call a classifier directly, so each request is padded to the
longest with attention_mask 0, which the model ignores.

A client may also send anything at all to a classifier. Each request is checked before it joins
the batch (shapes that agree, token ids inside the embedding tables, rows no longer than
max_length, masks of 0 and 1, the feature count): one bad id would otherwise fail the whole
merged execution, every other client's request with it. A request that fails a check gets its own
error response (INVALID_ARG: HTTP 400, gRPC INVALID_ARGUMENT) naming the input; the others run.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from contract.names import FEATURES, TEXT_INPUTS


class BadRequest(ValueError):
    pass


class InvalidInput(str):
    """An error message about a request's own inputs (the client's fault, answered as INVALID_ARG);
    any other message in an errors list is the server's (INTERNAL)."""


def _out_of_range(a, low, high):
    """The first value of `a` outside [low, high), or None."""
    bad = (a < low) | (a >= high)
    return a[bad].flat[0] if bad.any() else None


def _check(arrays, num_features, limits=None):
    ids = arrays["input_ids"]
    shape = ids.shape
    if len(shape) != 2 or 0 in shape:
        raise BadRequest(f"input_ids must be (batch, tokens) with at least one of each, got shape {shape}")
    for name in TEXT_INPUTS[1:]:
        if arrays[name].shape != shape:
            raise BadRequest(f"{name} has shape {arrays[name].shape} but input_ids has {shape}")
    if num_features:
        f = arrays.get(FEATURES)
        if f is None or f.shape != (shape[0], num_features):
            raise BadRequest(f"features must be ({shape[0]}, {num_features}), "
                             f"got {None if f is None else f.shape}")
        if not np.isfinite(f).all():
            raise BadRequest("features must be finite numbers (found NaN or infinity)")
    max_length = getattr(limits, "max_length", 0)
    if max_length and shape[1] > max_length:
        raise BadRequest(f"input_ids has {shape[1]} tokens per row; this model takes at most {max_length} (max_length)")
    for name, size_name in (("input_ids", "vocab_size"), ("token_type_ids", "type_vocab_size")):
        size = getattr(limits, size_name, 0)
        bad = _out_of_range(arrays[name], 0, size) if size else None
        if bad is not None:
            raise BadRequest(f"{name} holds {bad}, outside this model's [0, {size}) ({size_name})")
    mask = arrays["attention_mask"]
    bad = _out_of_range(mask, 0, 2)
    if bad is not None:
        raise BadRequest(f"attention_mask must be 0 or 1, found {bad}")
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise BadRequest(f"attention_mask row {empty[0]} has no 1: every row needs at least one real token")


def gather(requests, read_input, num_features=0, pad_token_id=0, limits=None):
    """-> (batch dict of arrays or None, rows per request, errors per request (None = fine)).

    read_input(request, name) returns that input as a numpy array (or None when absent). limits:
    anything with vocab_size, type_vocab_size and max_length (a ClassifierParams; 0 = unchecked).
    """
    per_request, errors = [], []
    names = TEXT_INPUTS + ((FEATURES,) if num_features else ())
    for i, request in enumerate(requests):
        try:
            arrays = {}
            for name in names:
                a = read_input(request, name)
                if a is None:
                    raise BadRequest(f"input '{name}' is missing")
                arrays[name] = a
            _check(arrays, num_features, limits)
            per_request.append(arrays)
            errors.append(None)
        except BadRequest as e:
            per_request.append(None)
            errors.append(InvalidInput(f"request {i} of this batch: {e}"))

    good = [a for a in per_request if a is not None]
    rows = [0 if a is None else a["input_ids"].shape[0] for a in per_request]
    if not good:
        return None, rows, errors
    T = max(a["input_ids"].shape[1] for a in good)
    pad_values = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": 0}
    batch = {}
    for name in TEXT_INPUTS:
        batch[name] = np.concatenate([
            np.pad(a[name].astype(np.int64, copy=False), ((0, 0), (0, T - a[name].shape[1])),
                   constant_values=pad_values[name]) for a in good])
    if num_features:
        batch[FEATURES] = np.concatenate([a[FEATURES].astype(np.float32, copy=False) for a in good])
    return batch, rows, errors


def plan_threads(threads, chunk_rows):
    """-> (chunks run at once, threads inside each run) for a model given `threads` cores.

    Length-sorted chunks run side by side, each on one thread, rather than one run at a time on
    every thread: a multi-threaded run splits every op across threads and waits for the slowest at
    its end, and when the tokenizer, the server or a client takes a core from one of them, the
    other waits with it. Without chunks there is one run, so it gets all the threads.
    """
    threads = max(1, int(threads))
    return (threads, 1) if chunk_rows > 0 else (1, threads)


_pools = {}


def _pool(workers):
    if workers not in _pools:   # one per process and size: a model process lives as long as its model
        _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="chunk")
    return _pools[workers]


def balanced_chunks(lengths, parts, max_rows):
    """Cut ascending `lengths` into at most `parts` runs of consecutive rows, each of at most
    `max_rows` rows, so that the largest padded size (rows x its longest) is as small as possible.
    -> list of row counts. Chunks that run side by side should take about as long as each other,
    or one core idles while the other finishes: 7 texts of 10..60 tokens cut 4 + 3 pad to 100 and
    180 tokens, cut 5 + 2 to 150 and 120.
    """
    n = len(lengths)

    def greedy(limit):   # take as many rows as fit, shortest first (optimal for ascending lengths)
        sizes, start = [], 0
        while start < n:
            end = start
            while end < n and end - start < max_rows and (end - start + 1) * lengths[end] <= limit:
                end += 1
            if end == start or len(sizes) == parts:
                return None
            sizes.append(end - start)
            start = end
        return sizes

    lo, hi = int(lengths[-1]), int(lengths[-1]) * max_rows   # hi always fits: parts x max_rows >= n
    while lo < hi:
        mid = (lo + hi) // 2
        if greedy(mid) is None:
            lo = mid + 1
        else:
            hi = mid
    return greedy(lo)


def run_sorted_chunks(run, batch, chunk_rows, workers=1):
    """Logits of `batch` from `run(sub_batch)`, run on length-sorted chunks of `chunk_rows` rows.

    One batch is padded to its longest text, so on short, uneven texts (tweets) most of its matmul
    work is padding. Sorted by real length and cut into chunks, each chunk is trimmed to its own
    longest text and wastes little; rows come back in the caller's order. chunk_rows <= 0 runs the
    batch as it came. workers > 1 runs that many chunks at once on threads (`run` must be
    thread-safe and release the GIL, as ONNX Runtime and torch do); a batch is then cut into
    chunks of even padded size, up to a multiple of `workers` of them, so that a few single texts
    merged by Triton use every core too. Shared by the served models and the benchmark's
    in-process baseline.
    """
    n = len(batch["input_ids"])
    rows_per_chunk = min(chunk_rows, -(-n // max(1, workers)))
    if chunk_rows <= 0 or n <= rows_per_chunk:
        return run(batch)
    mask = batch["attention_mask"]
    # each row's extent: one past its last real token (robust to any padding side)
    extent = np.where(mask.any(1), mask.shape[1] - np.argmax(mask[:, ::-1] != 0, axis=1), 1)
    order = np.argsort(extent, kind="stable")
    if workers > 1:   # up to a multiple of `workers` chunks of even padded size: every core stays busy
        n_chunks = -(-max(workers, -(-n // chunk_rows)) // workers) * workers
        sizes = balanced_chunks(extent[order], n_chunks, chunk_rows)
    else:
        sizes = [rows_per_chunk] * (-(-n // rows_per_chunk))
    bounds = np.cumsum([0] + sizes)
    chunks = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def run_chunk(rows):
        T = int(extent[rows].max())
        return run({k: (v[rows, :T] if k in TEXT_INPUTS else v[rows]) for k, v in batch.items()})

    if workers > 1:   # longest chunks first, so the last ones to finish are the short ones
        parts = list(_pool(workers).map(run_chunk, chunks[::-1]))[::-1]
    else:
        parts = [run_chunk(rows) for rows in chunks]
    out = np.empty((n,) + parts[0].shape[1:], dtype=parts[0].dtype)
    out[order] = np.concatenate(parts)
    return out


def split(outputs, rows, errors):
    """Cut batch outputs (dict name -> (N, ...) array) back into one dict per request.

    Returns a list aligned with the requests: a dict of arrays, or the error message string.
    """
    result, start = [], 0
    for n, err in zip(rows, errors):
        if err is not None:
            result.append(err)
            continue
        result.append({name: a[start:start + n] for name, a in outputs.items()})
        start += n
    return result


def error_response(pb_utils, message, client_fault=True):
    """A response carrying only an error: INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT) for what the
    client sent, INTERNAL (500) for the server's own failures; pb_utils' default would be INTERNAL."""
    code = pb_utils.TritonError.INVALID_ARG if client_fault else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def respond(pb_utils, outputs, rows, errors):
    """InferenceResponses aligned with the requests (pb_utils passed in: importable only in Triton)."""
    responses = []
    for part in split(outputs, rows, errors):
        if isinstance(part, str):
            responses.append(error_response(pb_utils, part, client_fault=isinstance(part, InvalidInput)))
        else:
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, a) for name, a in part.items()]))
    return responses
