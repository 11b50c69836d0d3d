"""An audio model over real HTTP: WAV in binary and JSON responses, format checks, manifest."""
import base64
import io

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.utils.server import running_server
from tests.utils.tiny_audio import CLASSES, cached_audio_model_dir


@pytest.fixture(scope="module", params=["onnx", "torchscript"])
def base(request, tmp_path_factory):
    model_dir = cached_audio_model_dir(tmp_path_factory)
    with running_server(model_dirs=str(model_dir), backend=request.param, max_batch=16, max_queue=64) as (url, _):
        yield url


def post(base, **body):
    return httpx.post(base + "/generate", json={"model": "tiny-audio", **body}, timeout=30)


def read_wav(data: bytes) -> tuple[np.ndarray, int, sf._SoundFileInfo]:
    info = sf.info(io.BytesIO(data))
    a, sr = sf.read(io.BytesIO(data), dtype="float32")
    return a, sr, info


def test_generate_wav_is_16khz_mono_pcm(base):
    r = post(base, label="high", deadline_ms=2000, seed=3, format="wav")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav" and r.content[:4] == b"RIFF" and r.content[8:12] == b"WAVE"
    a, sr, info = read_wav(r.content)
    assert sr == 16000 and info.channels == 1 and info.subtype == "PCM_16" and a.shape == (256,)
    assert np.abs(a).max() <= 1 and a.std() > 1e-3
    assert r.headers["x-anytime-label"] == "high" and r.headers["x-anytime-tokens"] == "8"
    assert r.headers["x-anytime-deadline-met"] == "true"
    # the same seed gives the same audio, the decoder's [0, 1] output mapped back to [-1, 1]
    npy = np.load(io.BytesIO(post(base, label="high", deadline_ms=2000, seed=3, format="npy").content))
    assert npy.shape == (1, 1, 256)
    np.testing.assert_allclose(a, npy.reshape(-1) * 2 - 1, atol=1 / 16384)


def test_several_samples_are_one_wav_in_binary_and_one_each_in_json(base):
    r = post(base, deadline_ms=2000, seed=4, n=3, format="wav")
    a, sr, _ = read_wav(r.content)
    assert r.status_code == 200 and sr == 16000 and a.shape == (3 * 256,)
    body = post(base, deadline_ms=2000, seed=4, n=3, label=1).json()
    assert body["label"] == "mid" and len(body["samples"]) == 3
    for i, s in enumerate(body["samples"]):
        assert s["media_type"] == "audio/wav"
        one, sr, info = read_wav(base64.b64decode(s["data"]))
        assert sr == 16000 and info.channels == 1 and one.shape == (256,)


def test_png_is_refused_for_audio_and_labels_are_the_models(base):
    r = post(base, deadline_ms=1000, format="png")
    assert r.status_code == 422 and "image model" in r.json()["error"]["message"]
    r = post(base, deadline_ms=1000, label="seven")
    assert r.status_code == 404 and "low, mid, high" in r.json()["error"]["message"]


def test_models_endpoint_reports_audio_output(base):
    one = httpx.get(base + "/models/tiny-audio").json()
    assert one["modality"] == "audio" and one["classes"] == CLASSES
    assert one["output"]["sample_rate"] == 16000 and one["output"]["shape"] == [1, 256]


def test_bench_wav_check_accepts_the_servers_wav_and_rejects_others(base):
    from bench.model.spoken_digits_wav import check_wav

    data = post(base, deadline_ms=2000, seed=7, format="wav").content
    assert check_wav(data, 16000, 256).shape == (256,)
    with pytest.raises(AssertionError, match="sample rate"):
        check_wav(data, 22050, 256)
    buf = io.BytesIO()
    sf.write(buf, np.zeros((256, 2), np.float32), 16000, format="WAV", subtype="PCM_16")
    with pytest.raises(AssertionError, match="2 channels"):
        check_wav(buf.getvalue(), 16000, 256)
