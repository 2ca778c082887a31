"""The zoo's data looks like the real thing to the real models: the OCR recogniser reads the
rendered lines, the detector finds text on the pages, O-Net sees faces in the drawn crops, Silero
hears speech in the synthetic audio; every generator is deterministic and fits its model's inputs."""

from __future__ import annotations

import _zoo
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch


def session(path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", list(_zoo.SPECS))
def test_inputs_are_deterministic(zoo, name: str) -> None:
    a, b = _zoo.inputs_for(name, 3, seed=5, small=True), _zoo.inputs_for(name, 3, seed=5, small=True)
    c = _zoo.inputs_for(name, 3, seed=6, small=True)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("name", _zoo.ONNX_MODELS)
def test_onnx_models_run_on_their_inputs(zoo, name: str) -> None:
    path = zoo / f"{name}.onnx"
    s = session(path)
    arrays = _zoo.inputs_for(name, 3, small=True)
    for feed in _zoo.feeds(arrays, _zoo.input_ranks(path)):
        outs = s.run(None, feed)
        assert all(np.isfinite(o).all() for o in outs)


def test_ocr_recogniser_reads_the_rendered_lines(zoo) -> None:
    path = zoo / "ocr_rec.onnx"
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    chars = [*meta["character"].splitlines(), " "]
    probs = session(path).run(None, _zoo.inputs_for("ocr_rec", 8))[0]
    texts = []
    for row in probs.argmax(-1):
        keep = [int(i) for j, i in enumerate(row) if i != 0 and (j == 0 or i != row[j - 1])]
        texts.append("".join(chars[i - 1] for i in keep))
    words = {w.lower().strip(".,") for t in texts for w in t.split()}
    assert len(words & set(_zoo.WORDS)) >= 5, texts


def test_ocr_detector_finds_text_on_the_pages(zoo) -> None:
    x = _zoo.inputs_for("ocr_det", 2, side=320)["x"]
    prob = session(zoo / "ocr_det.onnx").run(None, {"x": x})[0]
    covered = (prob > 0.3).mean(axis=(1, 2, 3))
    assert ((covered > 0.02) & (covered < 0.6)).all(), covered


def test_onet_sees_faces_in_the_drawn_crops(zoo) -> None:
    model = _zoo.onet()
    with torch.no_grad():
        box, landmarks, prob = model(torch.from_numpy(_zoo.face_inputs(16)["input"]))
        noise = model(torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (16, 3, 48, 48)).astype(np.float32)))
    assert box.shape == (16, 4) and landmarks.shape == (16, 10)
    assert (prob[:, 1] > 0.5).float().mean() >= 0.75
    assert (noise[2][:, 1] < 0.5).float().mean() >= 0.75


def test_silero_hears_speech_and_silence(zoo) -> None:
    path = zoo / "silero_vad.onnx"
    s = session(path)
    arrays = _zoo.inputs_for("silero_vad", 24)
    probs = np.array([float(s.run(None, f)[0][0, 0]) for f in _zoo.feeds(arrays, _zoo.input_ranks(path))])
    assert (probs > 0.5).any() and (probs < 0.2).any(), probs
    assert arrays["state"].shape == (24, 2, 1, 128) and arrays["sr"].shape == (24,)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "convnext_tiny", "vit_small", "distilbert"])
def test_random_init_models_tell_inputs_apart(name: str) -> None:
    """Seeded random weights, yet the logits depend on the input (so fidelity means something)."""
    spec = _zoo.SPECS[name]
    model = _zoo.TORCH_MODELS[name](**spec.factory_kwargs)
    arrays = _zoo.inputs_for(name, 8, small=True)
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in arrays.items()}).logits.numpy()
    unit = out / np.linalg.norm(out, axis=1, keepdims=True)
    cos = unit @ unit.T
    assert (cos.sum() - 8) / 56 < 0.95, cos


def test_exported_onnx_matches_torch(zoo, tmp_path) -> None:
    model = _zoo.onet()
    arrays = _zoo.face_inputs(4)
    path = _zoo.export_onnx(model, arrays, tmp_path / "onet.onnx", _zoo.output_names("onet"))
    got = session(path).run(None, arrays)
    with torch.no_grad():
        want = model(torch.from_numpy(arrays["input"]))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4)
