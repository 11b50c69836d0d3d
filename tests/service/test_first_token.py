"""One-token samples from the engine's table: the decoder's own output for that code, served
without a decoder call the second time, mixed rows answered right, and a model whose decoder
disagrees with its manifest served without a table."""
import json
import shutil

import numpy as np
import pytest

from service.core.first_token import FirstTokenTable
from tests.utils.engine import make_engine, run, submit


@pytest.fixture(scope="module", params=["onnx", "torchscript"])
def engine(request, tiny_model_dir):
    e = make_engine(tiny_model_dir, backend=request.param, max_batch=16)
    yield e
    e.stop(5)


def _decoder(engine, codes, lengths):
    return engine.runtime.decode(np.asarray(codes, np.int64), np.asarray(lengths, np.int64))


def test_a_one_token_sample_is_decoded_once_then_copied(engine):
    table = engine.first_tokens
    first = run(engine, seed=21, n=4, max_tokens=1)
    codes = [s.codes[0] for s in first.sampled]
    hits = table.hits
    again = run(engine, seed=21, n=4, max_tokens=1)  # the same seed: the same first tokens
    assert table.hits - hits >= 4 and table.filled[codes].all()
    assert np.array_equal(again.samples, first.samples)
    padded = np.zeros((4, engine.spec.D), np.int64)
    padded[:, 0] = codes
    fresh = _decoder(engine, padded, [1] * 4)
    np.testing.assert_allclose(again.samples, fresh, atol=1e-5)


def test_table_rows_and_decoded_rows_mix_in_one_decode(engine):
    D = engine.spec.D
    run(engine, seed=5, n=3, max_tokens=1)  # these first tokens are in the table now
    reqs = [submit(engine, seed=5, n=3, max_tokens=1), submit(engine, seed=6, n=2, max_tokens=D),
            submit(engine, seed=7, n=2, max_tokens=3)]
    assert all(done.wait(30) for _, done in reqs)
    for req, _ in reqs:
        codes = np.zeros((req.samples_n, D), np.int64)
        for i, s in enumerate(req.sampled):
            codes[i, : len(s.codes)] = s.codes
        np.testing.assert_allclose(req.samples, _decoder(engine, codes, [req.tokens] * req.samples_n), atol=1e-5)


def test_the_table_stays_small_or_is_not_made():
    assert FirstTokenTable.for_model(512, (1, 28, 28)).samples.nbytes == 512 * 28 * 28 * 4
    assert FirstTokenTable.for_model(1 << 16, (1, 16384)) is None  # 4 GiB of samples: no table
    assert FirstTokenTable.for_model(512, ()) is None


def test_a_decoder_that_disagrees_with_the_manifest_serves_without_a_table(tiny_model_dir, tmp_path):
    d = tmp_path / "wrong-shape"
    shutil.copytree(tiny_model_dir, d)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["output"]["shape"] = [1, 4, 4]  # the decoder gives [1, 8, 8]
    (d / "manifest.json").write_text(json.dumps(manifest))
    e = make_engine(d, max_batch=4)
    try:
        a = run(e, seed=1, n=2, max_tokens=1)
        assert a.error is None and a.samples.shape == (2, 1, 8, 8) and e.first_tokens is None
        b = run(e, seed=1, n=2, max_tokens=1)
        assert np.array_equal(a.samples, b.samples)
    finally:
        e.stop(5)
