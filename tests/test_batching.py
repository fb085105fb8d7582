"""contract/batching.py: one batch from many requests, and length-sorted chunks."""
import numpy as np
import pytest

from contract.batching import balanced_chunks, gather, plan_threads, run_sorted_chunks, split


def _batch(lengths, T, left_padded=False, seed=0):
    rng = np.random.default_rng(seed)
    n = len(lengths)
    ids = np.zeros((n, T), dtype=np.int64)
    mask = np.zeros((n, T), dtype=np.int64)
    for i, L in enumerate(lengths):
        cols = slice(T - L, T) if left_padded else slice(0, L)
        ids[i, cols] = rng.integers(1, 1000, L)
        mask[i, cols] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _model(calls):
    """A stand-in whose row output depends on that row's real tokens only, and records shapes."""
    def run(b):
        calls.append(b["input_ids"].shape)
        ids, mask = b["input_ids"], b["attention_mask"]
        return np.stack([(ids * mask).sum(1), mask.sum(1)], axis=1).astype(np.float32)
    return run


@pytest.mark.parametrize("left_padded", [False, True])
def test_sorted_chunks_give_the_whole_batch_result_in_order_with_less_padding(left_padded):
    lengths = [5, 40, 7, 12, 3, 33, 9, 21, 6, 18]
    batch = _batch(lengths, 48, left_padded)
    whole_calls, chunk_calls = [], []
    whole = run_sorted_chunks(_model(whole_calls), batch, 0)
    chunked = run_sorted_chunks(_model(chunk_calls), batch, 4)
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_array_equal(chunked[:, 1], lengths)       # rows back in the caller's order
    assert whole_calls == [(10, 48)]
    if not left_padded:  # right padding: each chunk trimmed to its own longest text
        assert chunk_calls == [(4, 7), (4, 21), (2, 40)]
    else:                # left padding: extents reach the end, nothing to trim, still correct
        assert [c[0] for c in chunk_calls] == [4, 4, 2]
    padded = sum(r * t for r, t in chunk_calls)
    assert left_padded or padded < 0.5 * 10 * 48


def test_a_batch_no_larger_than_a_chunk_runs_as_it_came():
    batch = _batch([3, 5], 16)
    calls = []
    run_sorted_chunks(_model(calls), batch, 8)
    assert calls == [(2, 16)]


@pytest.mark.parametrize("workers", [2, 3])
def test_chunks_run_side_by_side_give_the_same_result_and_split_small_batches(workers):
    lengths = [5, 40, 7, 12, 3, 33, 9, 21, 6, 18]
    batch = _batch(lengths, 48)
    serial = run_sorted_chunks(_model([]), batch, 4)
    calls = []
    parallel = run_sorted_chunks(_model(calls), batch, 4, workers=workers)
    np.testing.assert_array_equal(parallel, serial)
    assert all(rows <= 4 for rows, _ in calls) and sum(rows for rows, _ in calls) == 10
    assert len(calls) % workers == 0                                # every worker gets as many
    # a batch no larger than one chunk is still cut so that every worker gets a part
    small, calls = _batch([3, 9, 5, 7, 2], 16), []
    out = run_sorted_chunks(_model(calls), small, 8, workers=workers)
    np.testing.assert_array_equal(out[:, 1], [3, 9, 5, 7, 2])
    assert len(calls) == workers and sum(c[0] for c in calls) == 5
    calls = []
    run_sorted_chunks(_model(calls), _batch([4], 8), 8, workers=workers)   # one text: one run
    assert calls == [(1, 8)]


def test_balanced_chunks_even_out_padded_sizes():
    # 4 + 3 rows would pad to 4 x 25 = 100 and 3 x 60 = 180 tokens; 5 + 2 to 150 and 120
    assert balanced_chunks([10, 15, 20, 25, 30, 40, 60], 2, 8) == [5, 2]
    assert balanced_chunks([10, 15, 20, 25, 30, 40, 60], 2, 4) == [4, 3]   # at most 4 rows a chunk
    assert balanced_chunks([7] * 32, 4, 8) == [8, 8, 8, 8]
    assert balanced_chunks([3], 2, 8) == [1]
    rng = np.random.default_rng(1)
    for _ in range(50):
        lengths = np.sort(rng.integers(1, 128, rng.integers(1, 40)))
        parts, max_rows = int(rng.integers(1, 5)), int(rng.integers(1, 9))
        parts = max(parts, -(-len(lengths) // max_rows))
        sizes = balanced_chunks(lengths, parts, max_rows)
        assert sum(sizes) == len(lengths) and len(sizes) <= parts and max(sizes) <= max_rows
        bounds = np.cumsum([0] + sizes)
        worst = max(int(lengths[b - 1]) * (b - a) for a, b in zip(bounds[:-1], bounds[1:]))
        even = -(-len(lengths) // parts)     # the plain cut into equal row counts is never better
        plain = max(int(lengths[min(a + even, len(lengths)) - 1]) * (min(a + even, len(lengths)) - a)
                    for a in range(0, len(lengths), even))
        assert worst <= plain or even > max_rows


def test_thread_plan_chunks_side_by_side_or_one_run_on_every_thread():
    assert plan_threads(2, 8) == (2, 1)     # chunks: each single-threaded, two at once
    assert plan_threads(2, 0) == (1, 2)     # no chunks: one run on both threads
    assert plan_threads(0, 8) == (1, 1)


def test_features_follow_their_rows():
    batch = _batch([9, 2, 5], 12)
    batch["features"] = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    out = run_sorted_chunks(lambda b: b["features"] * 10 + b["attention_mask"].sum(1, keepdims=True), batch, 1)
    np.testing.assert_array_equal(out[:, 0], [19.0, 22.0, 35.0])


def test_gather_pads_requests_to_one_length_and_isolates_a_bad_one():
    good1, good2 = _batch([3], 4), _batch([6, 2], 8)
    bad = dict(_batch([2], 4), token_type_ids=np.zeros((1, 5), dtype=np.int64))
    requests = [good1, bad, good2]
    batch, rows, errors = gather(requests, lambda r, name: r.get(name), pad_token_id=0)
    assert batch["input_ids"].shape == (3, 8) and rows == [1, 0, 2]
    assert errors[0] is None and errors[2] is None and "request 1" in errors[1] and "token_type_ids" in errors[1]
    parts = split({"logits": np.arange(3)}, rows, errors)
    assert list(parts[0]["logits"]) == [0] and isinstance(parts[1], str) and list(parts[2]["logits"]) == [1, 2]


def test_gather_checks_what_each_request_carries_and_names_the_input():
    """One request per fault, each among good ones: only it fails, as the client's fault, naming the input."""
    from contract.batching import InvalidInput
    from contract.params import ClassifierParams

    limits = ClassifierParams(vocab_size=1000, type_vocab_size=2, max_length=16)   # _batch's ids: 1..999

    def fault(**changes):
        return {**_batch([4], 8), **changes}
    ids = _batch([4], 8)["input_ids"]
    faults = {
        "input_ids holds 1000, outside this model's [0, 1000) (vocab_size)": fault(input_ids=np.where(ids > 0, 1000, 0)),
        "input_ids holds -1": fault(input_ids=-np.ones_like(ids)),
        "token_type_ids holds 2, outside this model's [0, 2)": fault(token_type_ids=np.full_like(ids, 2)),
        "input_ids has 17 tokens per row; this model takes at most 16 (max_length)": _batch([17], 17),
        "attention_mask must be 0 or 1, found 3": fault(attention_mask=np.full_like(ids, 3)),
        "attention_mask row 0 has no 1": fault(attention_mask=np.zeros_like(ids)),
        "attention_mask has shape (1, 7) but input_ids has (1, 8)": fault(attention_mask=np.ones((1, 7), np.int64)),
        "input_ids must be (batch, tokens) with at least one of each, got shape (1, 0)":
            {k: np.zeros((1, 0), np.int64) for k in _batch([1], 1)},
        "input 'token_type_ids' is missing": {k: v for k, v in fault().items() if k != "token_type_ids"},
    }
    good = [_batch([3], 4), _batch([6, 2], 8)]
    batch, rows, errors = gather([good[0], *faults.values(), good[1]], lambda r, n: r.get(n), limits=limits)
    assert errors[0] is None and errors[-1] is None and batch["input_ids"].shape == (3, 8)
    for i, (message, err) in enumerate(zip(faults, errors[1:-1]), start=1):
        assert isinstance(err, InvalidInput) and err.startswith(f"request {i} of this batch: ") and message in err, err
    # without limits (the benchmark's in-process baseline) ids are not range-checked
    assert gather([faults["input_ids holds -1"]], lambda r, n: r.get(n))[2] == [None]


def test_gather_checks_the_features_of_a_tabular_model():
    from contract.batching import InvalidInput

    bad = [dict(_batch([3], 4), features=np.array([[1.0, np.nan]], np.float32)),
           dict(_batch([3], 4), features=np.ones((1, 3), np.float32)),
           _batch([3], 4)]
    good = dict(_batch([3], 4), features=np.ones((1, 2), np.float32))
    batch, rows, errors = gather([*bad, good], lambda r, n: r.get(n), num_features=2)
    assert rows == [0, 0, 0, 1] and batch["features"].shape == (1, 2) and errors[3] is None
    assert "finite" in errors[0] and "features must be (1, 2), got (1, 3)" in errors[1] and "features" in errors[2]
    assert all(isinstance(e, InvalidInput) for e in errors[:3])
