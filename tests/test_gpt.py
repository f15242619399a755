"""A character-level GPT: the tokenizer, nanoGPT's model and initialisation, windows of a token file, AdamW on
matrices, per-step cosine schedule, generation on the device, resume, export."""
import numpy as np
import pytest

import nnkit
from nnkit.text import CharTokenizer, TokenWindows
from tests.helpers import to_np

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 12


def _gpt(backend="numpy", **kw):
    tok = CharTokenizer.fit(TEXT)
    model = nnkit.Sequential.gpt(tok.vocab_size, 16, 32, 2, 4, seed=0, backend=backend, **kw)
    model.tokenizer = tok
    return model, tok


def test_char_tokenizer_round_trips_and_names_an_unknown_character(tmp_path):
    tok = CharTokenizer.fit(TEXT)
    assert tok.chars == sorted(set(TEXT)) and tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.encode("Speak").dtype == np.int64
    with pytest.raises(ValueError, match=r"character '@' \(U\+0040\) at position 3 is not in the vocabulary"):
        tok.encode("Spe@")
    with pytest.raises(ValueError, match="integer ids in"):
        tok.decode([0, 99])
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.fit("")
    model, _ = _gpt()
    model.save(tmp_path / "gpt.npz")
    assert nnkit.load(tmp_path / "gpt.npz").tokenizer == tok


def test_gpt_has_nanogpts_shape_and_initialisation():
    model = nnkit.Sequential.gpt(65, 64, 128, 4, 4, seed=0)
    sd = {k: to_np(v) for k, v in model.state_dict().items()}
    # nanoGPT's count for this configuration, the tied head counted once: wte, wpe, 4 blocks, ln_f
    E, V, L = 128, 65, 4
    assert model.n_params == V * E + 64 * E + L * (12 * E * E + 13 * E) + 2 * E
    assert abs(sd["0.weight"].std() - 0.02) < 2e-3 and abs(sd["2.attn.in_proj_weight"].std() - 0.02) < 1e-3
    resid = 0.02 / np.sqrt(2 * L)
    assert abs(sd["2.attn.out_proj_weight"].std() - resid) < 1e-3 and abs(sd["5.proj.W"].std() - resid) < 5e-4
    assert np.all(sd["2.fc.b"] == 0) and np.all(sd["6.gamma"] == 1)
    assert model.layers[-1].source is model.layers[0]  # the head is the token embedding
    untied = nnkit.Sequential.gpt(65, 64, 128, 4, 4, tie_weights=False, seed=0)
    assert isinstance(untied.layers[-1], nnkit.Dense)


def test_adamw_decays_matrices_only():
    opt = nnkit.optim.AdamW(0.1, weight_decay=0.5, decay="matrices")
    p = {"0.W": np.ones((2, 2)), "0.b": np.ones(2)}
    new = opt.step(p, {"0.W": np.zeros((2, 2)), "0.b": np.zeros(2)})
    np.testing.assert_allclose(new["0.W"], 0.95)  # θ ← θ − lr·λ·θ, no gradient step
    np.testing.assert_allclose(new["0.b"], 1.0)
    assert opt.hyperparameters()["decay"] == "matrices"
    with pytest.raises(ValueError, match="decay must be 'all' or 'matrices'"):
        nnkit.optim.AdamW(decay="biases")


def test_windows_of_a_memory_mapped_token_file_train_and_resume_bit_identically(tmp_path):
    """A corpus as a memory-mapped .npy of ids, K random windows an epoch, AdamW on matrices, clipping, a
    per-step warm-up and cosine schedule: stopped after 2 epochs and resumed, the run ends as the one that never
    stopped, bit for bit."""
    model, tok = _gpt()
    np.save(tmp_path / "ids.npy", tok.encode(TEXT))
    ids = np.load(tmp_path / "ids.npy", mmap_mode="r")
    windows = TokenWindows(ids, 16)
    X, Y = windows[[0, 5]]
    np.testing.assert_array_equal(X[1], tok.encode(TEXT[5:21]))
    np.testing.assert_array_equal(Y[1], tok.encode(TEXT[6:22]))

    def run(epochs, checkpoint=None, resume=False):
        m, _ = _gpt()
        sched = nnkit.optim.CosineLR(total=80, warmup=8, min_lr=1e-4, steps_per_epoch=10, lr=3e-3)
        opt = nnkit.optim.AdamW(3e-3, betas=(0.9, 0.99), weight_decay=0.1, clip_norm=1.0, decay="matrices")
        h = m.fit(windows, loss="cross_entropy", optimizer=opt, epochs=epochs, batch_size=8, steps_per_epoch=10,
                  callbacks=[sched], verbose=0, checkpoint=checkpoint, resume=resume)
        return m, h

    whole, h_whole = run(4)
    assert h_whole["loss"][-1] < h_whole["loss"][0] < np.log(tok.vocab_size) + 0.2  # nanoGPT's init: ≈ ln V
    ckpt = tmp_path / "run.npz"
    run(2, ckpt)
    resumed, h_resumed = run(4, ckpt, resume=True)
    for k, v in whole.state_dict().items():
        np.testing.assert_array_equal(to_np(resumed.state_dict()[k]), to_np(v), err_msg=k)
    np.testing.assert_array_equal(h_resumed["loss"], h_whole["loss"][2:])
    with pytest.raises(ValueError, match="steps_per_epoch draws each epoch's rows at random"):
        whole.fit(X, Y, loss="cross_entropy", epochs=1, steps_per_epoch=3, verbose=0)


def test_generate_is_reproducible_crops_to_the_block_and_refuses_bad_prompts():
    model, tok = _gpt()
    model.fit(TokenWindows(tok.encode(TEXT), 16), loss="cross_entropy", optimizer=nnkit.optim.AdamW(3e-3),
              epochs=3, batch_size=8, steps_per_epoch=30, verbose=0)
    a = model.generate("First", 40, seed=3)
    assert a == model.generate("First", 40, seed=3) and a.startswith("First") and len(a) == 45  # past block 16
    assert model.generate("First", 40, seed=4) != a or model.generate("First", 40, seed=5) != a
    ids = tok.encode("Speak")
    greedy = model.generate(ids, 10, top_k=1, seed=0)
    x = list(ids)  # greedy decoding by hand, one predict per token, the context cropped to the block
    for _ in range(10):
        logits = to_np(model.predict(np.array([x[-16:]])))[0, -1]
        x.append(int(np.argmax(logits)))
    np.testing.assert_array_equal(greedy, x)
    batch = model.generate(np.stack([ids, ids]), 5, seed=1)
    assert batch.shape == (2, 10)
    for bad, match in (("", "empty"), ("Spe@", "'@'.*position 3"), (np.array([], dtype=np.int64), "T ≥ 1"),
                       (np.array([0, 99]), "in \\[0, ")):
        with pytest.raises(ValueError, match=match):
            model.generate(bad, 3)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        model.generate("Sp", 3, temperature=0)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        model.generate("Sp", 3, top_k=0)


@pytest.mark.slow
def test_generation_reads_the_device_once(jax_reads):
    pytest.importorskip("jax")
    model, tok = _gpt("jax")
    model.generate("First", 2, seed=0, top_k=5)  # warm: the first call traces the operations it runs
    jax_reads.clear()
    out = model.generate("First", 12, seed=0, top_k=5)
    assert len(out) == 17 and len(jax_reads) == 1  # the tokens, read back at the end: no read per token


def test_gpt_explains_exports_and_goes_to_torch():
    model, tok = _gpt(dtype="float64")
    ids = tok.encode("First Citizen:\n")[None, :]
    report = model.explain(ids[:, :6], ids[:, 1:7], "cross_entropy")
    assert report.values["P2"].shape == (1, 4, 6, 6)  # the first block's heads
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        np.testing.assert_allclose(model.to_torch()(torch.as_tensor(ids)).numpy(), to_np(model.predict(ids)),
                                   rtol=1e-9, atol=1e-12)
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    sess = ort.InferenceSession(model.export(None).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": ids})[0], to_np(model.predict(ids)), rtol=1e-7, atol=1e-10)
