"""vss_core.model.audio against independent re-computations of the official LongCat-Flash-Omni code.

The references below are written from the official math (data/audio_feature.py,
data/audio_data.py, encoders/audio_adaptor.py of meituan-longcat/LongCat-Flash-Omni) in plain
float64 numpy / torch, frame by frame; they do not call vss code.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as ta_kaldi

from vss_core.errors import ModelError
from vss_core.model import audio

F32_EPS = float(np.finfo(np.float32).eps)


# ------------------------------------------------------------------------------------------
# Independent reference of the official FeatureProcessor
# ------------------------------------------------------------------------------------------


def ref_mel_weights(sr: int, fft: int, n_mel: int, low: float, high: float) -> np.ndarray:
    """[fft/2 + 1, n_mel] triangles on 1127 ln(1 + f/700), last (Nyquist) row zero."""

    def mel(f: float) -> float:
        return 1127.0 * math.log(1.0 + f / 700.0)

    lo, hi = mel(low), mel(high)
    delta = (hi - lo) / (n_mel + 1)
    w = np.zeros((fft // 2 + 1, n_mel))
    for k in range(fft // 2):
        mk = mel(k * sr / fft)
        for m in range(n_mel):
            left, center, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
            w[k, m] = max(0.0, min((mk - left) / (center - left), (right - mk) / (right - center)))
    return w


def ref_logmel(wave: np.ndarray, fb: dict) -> np.ndarray:
    """One waveform (already x 32768) -> [T, n_mel] log mel energies, no dither."""
    sr = fb["freq"]
    win = int(sr * fb["frame_length"] / 1000)
    hop = int(sr * fb["frame_shift"] / 1000)
    fft = 1
    while fft < win:
        fft *= 2
    window = np.array([(0.5 - 0.5 * math.cos(2 * math.pi * i / (win - 1))) ** 0.85 for i in range(win)])
    high = fb["high_freq"] + sr / 2 if fb["high_freq"] < 0 else fb["high_freq"]
    weights = ref_mel_weights(sr, fft, fb["num_mel_bins"], fb["low_freq"], high)
    n_frames = 1 + (len(wave) - win) // hop
    out = np.zeros((n_frames, fb["num_mel_bins"]))
    for t in range(n_frames):
        frame = wave[t * hop : t * hop + win].astype(np.float64)
        emph = np.empty(win)
        emph[0] = frame[0] - fb["preemphasis"] * frame[0]
        for i in range(1, win):
            emph[i] = frame[i] - fb["preemphasis"] * frame[i - 1]
        padded = np.zeros(fft)
        padded[:win] = emph * window
        power = np.abs(np.fft.rfft(padded)) ** 2
        out[t] = np.log(np.maximum(power @ weights, F32_EPS))
    pad = fb.get("padded_num_mel_bins")
    if pad:
        out = np.concatenate([out, np.zeros((n_frames, pad - fb["num_mel_bins"]))], axis=1)
    return out


def ref_delta(x: np.ndarray, order: int, n: int) -> np.ndarray:
    """[T, D] -> [T, D * (order + 1)]: Kaldi delta scales, frame indices clamped to [0, T-1]."""
    denom = 2 * sum(k * k for k in range(1, n + 1))
    base = [j / denom for j in range(-n, n + 1)]
    scales = [[1.0]]
    for _ in range(order):
        prev = scales[-1]
        cur = [0.0] * (len(prev) + len(base) - 1)
        for a, pa in enumerate(prev):
            for b, pb in enumerate(base):
                cur[a + b] += pa * pb
        scales.append(cur)
    T = x.shape[0]
    parts = [x]
    for i in range(1, order + 1):
        half = i * n
        d = np.zeros_like(x)
        for t in range(T):
            for j, s in enumerate(scales[i]):
                d[t] += s * x[min(max(t + j - half, 0), T - 1)]
        parts.append(d)
    return np.concatenate(parts, axis=1)


def ref_splice(x: np.ndarray, left: int, right: int, stride: int) -> np.ndarray:
    T = x.shape[0]
    rows = []
    for j in range((T + stride - 1) // stride):
        rows.append(np.concatenate([x[min(max(j * stride - left + k, 0), T - 1)] for k in range(left + right + 1)]))
    return np.stack(rows)


def ref_features(wave: np.ndarray, raw: dict, stats: np.ndarray) -> np.ndarray:
    """Official FeatureProcessor for one waveform in [-1, 1], computed alone (no batch padding)."""
    x = ref_logmel(wave * 32768.0, raw["fbank"])
    x = ref_delta(x, raw["delta"]["delta_order"], raw["delta"]["window_size"])
    count = stats[0, -1]
    mean = stats[0, :-1] / count
    var = stats[1, :-1] / count - mean**2
    x = (x - mean) / np.maximum(F32_EPS, np.sqrt(var))
    sp = raw["splice"]
    return ref_splice(x, sp["left"], sp["right"], sp["stride"])


def save_stats(path: Path, dim: int, seed: int) -> np.ndarray:
    """A Kaldi cmvn stats matrix written with kaldiio directly (not through vss)."""
    rng = np.random.default_rng(seed)
    count = 5000.0
    mean = rng.normal(8.0, 3.0, dim)
    var = rng.uniform(0.5, 6.0, dim)
    stats = np.zeros((2, dim + 1))
    stats[0, :dim], stats[0, dim] = mean * count, count
    stats[1, :dim] = (var + mean**2) * count
    kaldiio.save_mat(str(path), stats)
    return stats


def waves(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded batch of tone + noise waveforms in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    batch = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        t = torch.arange(n) / 16000
        tone = 0.3 * torch.sin(2 * math.pi * (220 + 180 * i) * t)
        batch[i, :n] = tone + 0.05 * torch.randn(n, generator=g)
    return batch, torch.tensor(lengths)


def variant(delta_order: int, window: int, left: int, right: int, stride: int, **fbank) -> dict:
    raw = copy.deepcopy(audio.TINY_PREPROCESSOR_CONFIG)
    raw["fbank"].update(fbank)
    raw["delta"] = {"delta_order": delta_order, "window_size": window}
    raw["splice"].update(left=left, right=right, stride=stride)
    return raw


PREPROC_CASES = {
    "tiny": audio.TINY_PREPROCESSOR_CONFIG,
    "delta2": variant(2, 2, 2, 1, 3, num_mel_bins=23, low_freq=60, high_freq=-400, preemphasis=0.9),
    "delta1_8k_padded": variant(1, 3, 1, 2, 2, freq=8000, high_freq=4000, num_mel_bins=20, padded_num_mel_bins=24),
}


@pytest.mark.parametrize("case", sorted(PREPROC_CASES))
def test_features_equal_independent_reference(case: str, tmp_path: Path) -> None:
    raw = PREPROC_CASES[case]
    cfg = audio.PreprocessorConfig.from_json(raw, tmp_path / "preprocessor_config.json")
    stats = save_stats(tmp_path / "global_cmvn", cfg.cmvn_dim, seed=1)
    extractor = audio.FeatureExtractor(cfg, tmp_path / "global_cmvn")
    sr = raw["fbank"]["freq"]
    lengths = [sr, sr * 6 // 10 + 37]
    batch, lens = waves(lengths)
    feats, mask = extractor(batch, lens)
    assert feats.dtype == torch.float32 and feats.shape[-1] == cfg.feature_dim
    for i, n in enumerate(lengths):
        ref = ref_features(batch[i, :n].double().numpy(), raw, stats)
        assert int(mask[i].sum()) == ref.shape[0] == audio.audio_token_count(n, cfg)
        assert not mask[i, ref.shape[0] :].any()
        got = feats[i, : ref.shape[0]].double().numpy()
        np.testing.assert_allclose(got, ref, rtol=0, atol=5e-4)


def test_tiny_preprocessor_gives_1200_dims_and_80_ms_frames() -> None:
    cfg = audio.PreprocessorConfig.from_json(audio.TINY_PREPROCESSOR_CONFIG, "p.json")
    assert cfg.feature_dim == audio.AudioConfig().input_size == 1200
    assert cfg.frame_seconds == pytest.approx(0.08)
    assert cfg.to_json() == audio.TINY_PREPROCESSOR_CONFIG


def test_fbank_matches_kaldi_povey_without_dc_removal(tmp_path: Path) -> None:
    """Official Fbank = Kaldi fbank with the povey window (hann^0.85, symmetric) and no DC removal.

    With cmvn mean 0 / var 1 and no delta or splice, vss's features are the log mel energies.
    torchaudio's Kaldi fbank agrees once `remove_dc_offset=False`; with Kaldi's default
    (remove_dc_offset=True) and with a plain Hann window it legitimately differs. Another
    legitimate difference, not exercised: Kaldi reads high_freq <= 0 as an offset from Nyquist,
    the official Fbank only high_freq < 0 (vss rejects high_freq = 0).
    """
    raw = variant(0, 2, 0, 0, 1)
    cfg = audio.PreprocessorConfig.from_json(raw, "p.json")
    stats = np.zeros((2, 81))
    stats[0, 80] = 10.0
    stats[1, :80] = 10.0  # mean 0, var 1 -> scale 1
    kaldiio.save_mat(str(tmp_path / "cmvn"), stats)
    extractor = audio.FeatureExtractor(cfg, tmp_path / "cmvn")
    batch, lens = waves([16000])
    feats, mask = extractor(batch, lens)
    fb = raw["fbank"]

    def kaldi(**kw: object) -> torch.Tensor:
        args = dict(
            num_mel_bins=fb["num_mel_bins"],
            frame_length=fb["frame_length"],
            frame_shift=fb["frame_shift"],
            dither=0.0,
            preemphasis_coefficient=fb["preemphasis"],
            low_freq=fb["low_freq"],
            high_freq=fb["high_freq"],
            sample_frequency=fb["freq"],
            window_type="povey",
            remove_dc_offset=False,
            round_to_power_of_two=True,
            snip_edges=True,
            use_energy=False,
        )
        args.update(kw)
        return ta_kaldi.fbank(batch[:1] * 32768.0, **args)

    ref = kaldi()
    assert ref.shape == feats[0].shape and bool(mask.all())
    torch.testing.assert_close(feats[0], ref, rtol=0, atol=1e-5)
    assert (kaldi(remove_dc_offset=True) - feats[0]).abs().max() > 1e-2
    assert (kaldi(window_type="hanning") - feats[0]).abs().max() > 1e-2


def test_feature_rows_do_not_depend_on_batch(tmp_path: Path) -> None:
    cfg = audio.PreprocessorConfig.from_json(PREPROC_CASES["delta2"], "p.json")
    save_stats(tmp_path / "cmvn", cfg.cmvn_dim, seed=2)
    extractor = audio.FeatureExtractor(cfg, tmp_path / "cmvn")
    batch, lens = waves([16000, 7001])
    feats, mask = extractor(batch, lens)
    alone, alone_mask = extractor(batch[1:, :7001], lens[1:])
    n = int(alone_mask.sum())
    assert int(mask[1].sum()) == n
    torch.testing.assert_close(feats[1, :n], alone[0, :n], rtol=0, atol=1e-4)


def test_feature_extractor_from_dir_and_short_audio(tmp_path: Path) -> None:
    (tmp_path / audio.PREPROCESSOR_FILE).write_text(json.dumps(audio.TINY_PREPROCESSOR_CONFIG))
    save_stats(tmp_path / audio.CMVN_FILE, 80, seed=3)
    extractor = audio.FeatureExtractor.from_dir(tmp_path)
    feats, mask = extractor(torch.zeros(2, 300), torch.tensor([300, 100]))
    assert feats.shape == (2, 0, 1200) and mask.shape == (2, 0)
    batch, _ = waves([4000])
    feats, mask = extractor(torch.cat([batch, torch.zeros(1, 4000)]), torch.tensor([4000, 200]))
    assert mask.sum(1).tolist() == [audio.audio_token_count(4000, extractor.cfg), 0]


def test_cmvn_dims_must_match_preprocessor(tmp_path: Path) -> None:
    cfg = audio.PreprocessorConfig.from_json(audio.TINY_PREPROCESSOR_CONFIG, "p.json")
    save_stats(tmp_path / "global_cmvn", 40, seed=0)
    with pytest.raises(ModelError, match=r"global_cmvn.*40 dims.*80"):
        audio.FeatureExtractor(cfg, tmp_path / "global_cmvn")


# ------------------------------------------------------------------------------------------
# Pad count
# ------------------------------------------------------------------------------------------


def test_audio_token_count_official_rule() -> None:
    cfg = audio.PreprocessorConfig.from_json(audio.TINY_PREPROCESSOR_CONFIG, "p.json")
    # (16000 - 400) // 160 + 1 = 98 fbank frames; ceil(98 / 8) = 13 tokens of 80 ms.
    assert audio.audio_token_count(16000, cfg) == 13
    assert audio.audio_token_count(16000 * 3, cfg) == 38  # 298 frames -> 38
    assert audio.audio_token_count(400, cfg) == 1
    assert audio.audio_token_count(399, cfg) == 0
    assert audio.audio_token_count(0, cfg) == 0
    for n in (400, 1679, 1680, 1681, 16000, 23457):
        frames = (n - 400) // 160 + 1
        assert audio.audio_token_count(n, cfg) == -(-frames // 8)


# ------------------------------------------------------------------------------------------
# Kaldi cmvn file
# ------------------------------------------------------------------------------------------


def test_write_kaldi_cmvn_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mean, var = rng.normal(5, 2, 12), rng.uniform(0.1, 3, 12)
    path = audio.write_kaldi_cmvn(tmp_path / "global_cmvn", mean, var, count=777.0)
    assert path.read_bytes()[:2] == b"\0B"  # Kaldi binary matrix
    stats = kaldiio.load_mat(str(path))
    assert stats.shape == (2, 13) and stats.dtype == np.float64
    assert stats[0, -1] == 777.0 and stats[1, -1] == 0.0
    np.testing.assert_allclose(stats[0, :-1] / 777.0, mean, rtol=1e-12)
    np.testing.assert_allclose(stats[1, :-1] / 777.0 - (stats[0, :-1] / 777.0) ** 2, var, rtol=1e-9)
    got_mean, got_scale = audio.read_kaldi_cmvn(path)
    assert got_mean.dtype == got_scale.dtype == torch.float32
    np.testing.assert_allclose(got_mean.numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(got_scale.numpy(), 1 / np.sqrt(var), rtol=1e-5)


def test_read_kaldi_cmvn_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nope.*missing"):
        audio.read_kaldi_cmvn(tmp_path / "nope")
    bad = tmp_path / "bad_count"
    kaldiio.save_mat(str(bad), np.ones((2, 4)) * np.array([1.0, 1.0, 1.0, 0.0]))
    with pytest.raises(ModelError, match=r"bad_count.*count"):
        audio.read_kaldi_cmvn(bad)
    shape = tmp_path / "bad_shape"
    kaldiio.save_mat(str(shape), np.ones((3, 4)))
    with pytest.raises(ModelError, match=r"bad_shape.*2 x \(D\+1\)"):
        audio.read_kaldi_cmvn(shape)
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a matrix")
    with pytest.raises(ModelError, match="junk"):
        audio.read_kaldi_cmvn(junk)


# ------------------------------------------------------------------------------------------
# Config validation
# ------------------------------------------------------------------------------------------


def test_audio_config_official_defaults_and_round_trip() -> None:
    cfg = audio.AudioConfig.from_json({}, "config.json")
    assert (cfg.input_size, cfg.hidden_size, cfg.proj_size, cfg.vocab_size) == (1200, 6144, 1536, 5252)
    assert (cfg.nlayer, cfg.ndnn, cfg.num_right_layers, cfg.left_order, cfg.right_order) == (22, 2, 6, 10, 1)
    assert (cfg.left_stride, cfg.right_stride, cfg.activation, cfg.dropout) == (1, 1, "relu6", 0.1)
    assert cfg.output_dim == 6144
    tiny = audio.AudioConfig.from_json(audio.TINY_AUDIO_CONFIG, "config.json")
    assert tiny.to_json() == audio.TINY_AUDIO_CONFIG
    extra = audio.AudioConfig.from_json({**audio.TINY_AUDIO_CONFIG, "model_type": "x"}, "c.json")
    assert extra.to_json()["model_type"] == "x"
    assert audio.AudioConfig.from_json({"ndnn": 0}, "c.json").output_dim == 1536


def test_audio_config_errors_name_file_and_keys() -> None:
    raw = {"layer_drop": 0.1, "ndnn": -1, "activation": "gelu", "nlayer": "22", "num_right_layers": 30}
    with pytest.raises(ModelError) as e:
        audio.AudioConfig.from_json(raw, "/m/audio/config.json")
    msg = str(e.value)
    for key in ("layer_drop", "ndnn", "activation", "nlayer", "num_right_layers"):
        assert f"/m/audio/config.json: key '{key}'" in msg


def test_preprocessor_config_collects_all_problems() -> None:
    raw = copy.deepcopy(audio.TINY_PREPROCESSOR_CONFIG)
    del raw["fbank"]["num_mel_bins"]
    del raw["delta"]
    raw["fbank"]["high_freq"] = 0
    raw["fbank"]["freq"] = 22050
    raw["splice"]["stride"] = 0
    raw["splice"]["random_start"] = "no"
    with pytest.raises(ModelError) as e:
        audio.PreprocessorConfig.from_json(raw, "/m/audio/preprocessor_config.json")
    msg = str(e.value)
    for key in ("fbank.num_mel_bins", "delta", "fbank.freq", "splice.stride", "splice.random_start"):
        assert f"/m/audio/preprocessor_config.json: key '{key}'" in msg
    raw = copy.deepcopy(audio.TINY_PREPROCESSOR_CONFIG)
    raw["fbank"]["high_freq"] = 0
    with pytest.raises(ModelError, match=r"'fbank.high_freq' = 0: the official Fbank reads 0 as 0 Hz"):
        audio.PreprocessorConfig.from_json(raw, "p.json")
    raw = copy.deepcopy(audio.TINY_PREPROCESSOR_CONFIG)
    raw["splice"].update(left=3, random_start=True)
    with pytest.raises(ModelError, match=r"'splice.left' = 3"):
        audio.PreprocessorConfig.from_json(raw, "p.json")


# ------------------------------------------------------------------------------------------
# Encoder + projector: key names and an independent reference of the official forward
# ------------------------------------------------------------------------------------------


def official_keys(nlayer: int) -> list[str]:
    """encoders/audio_adaptor.py LongCatAudioEncoder, ndnn=2: ffn [Linear, act, Linear(no bias)],
    fsmn_layers.N = memory_ln, memory (conv, no bias), ffn [LN, Linear, act, Linear],
    dnn [Linear, act, Linear, act], output Linear."""
    keys = ["ffn.0.weight", "ffn.0.bias", "ffn.2.weight"]
    for i in range(nlayer):
        p = f"fsmn_layers.{i}."
        keys += [p + "memory_ln.weight", p + "memory_ln.bias", p + "memory.weight"]
        keys += [p + "ffn.0.weight", p + "ffn.0.bias", p + "ffn.1.weight", p + "ffn.1.bias"]
        keys += [p + "ffn.3.weight", p + "ffn.3.bias"]
    return keys + ["dnn.0.weight", "dnn.0.bias", "dnn.2.weight", "dnn.2.bias", "output.weight", "output.bias"]


def test_state_dict_keys_are_official() -> None:
    cfg = audio.AudioConfig.from_json(audio.TINY_AUDIO_CONFIG, "c.json")
    encoder = audio.LongCatAudioEncoder(cfg)
    state = encoder.state_dict()
    assert list(state) == official_keys(3)
    assert state["fsmn_layers.0.memory.weight"].shape == (32, 1, 11)  # left 10, no right
    assert state["fsmn_layers.2.memory.weight"].shape == (32, 1, 12)  # last layer: 10 + 1 + 1
    assert state["ffn.0.weight"].shape == (64, 1200) and state["ffn.2.weight"].shape == (32, 64)
    assert state["output.weight"].shape == (16, 64)
    projector = audio.AudioProjector(cfg.output_dim, 48)
    assert {k: tuple(v.shape) for k, v in projector.state_dict().items()} == {
        "0.weight": (48, 64),
        "0.bias": (48,),
        "2.weight": (48, 48),
        "2.bias": (48,),
    }


def random_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g, dtype=torch.float64) * 0.3 for k, v in model.state_dict().items()}


def ref_layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * w + b


def ref_encoder_projector(
    sd: dict[str, torch.Tensor],
    pd: dict[str, torch.Tensor],
    raw: dict,
    x: torch.Tensor,
    keep: torch.Tensor,
    zero_memory_input: bool,
) -> torch.Tensor:
    """Official LongCatAudioEncoder.forward + audio_projector for one sequence x [T, C].

    keep [T] (1 valid / 0 pad) multiplies the hidden state before each block and before the dnn,
    as the official forward does; zero_memory_input also zeroes the conv input at pad frames.
    """

    def relu6(v: torch.Tensor) -> torch.Tensor:
        return v.clamp(0.0, 6.0)

    k = keep.unsqueeze(-1)
    T = x.shape[0]
    h = relu6(x @ sd["ffn.0.weight"].T + sd["ffn.0.bias"]) @ sd["ffn.2.weight"].T
    first_right = raw["nlayer"] - raw["num_right_layers"]
    d, lo = raw["left_stride"], raw["left_order"]
    for i in range(raw["nlayer"]):
        p = f"fsmn_layers.{i}."
        ro = raw["right_order"] if i >= first_right else 0
        h = h * k
        m_in = ref_layer_norm(h, sd[p + "memory_ln.weight"], sd[p + "memory_ln.bias"])
        if zero_memory_input:
            m_in = m_in * k
        kernel = sd[p + "memory.weight"][:, 0, :]  # [C, lo + ro + 1]
        mem = torch.zeros_like(h)
        for t in range(T):
            for j in range(lo + ro + 1):
                src = t + (j - lo) * d  # zero padding: lo*d frames before, ro*d after
                if 0 <= src < T:
                    mem[t] += kernel[:, j] * m_in[src]
        h2 = mem + h
        f = ref_layer_norm(h2, sd[p + "ffn.0.weight"], sd[p + "ffn.0.bias"])
        f = relu6(f @ sd[p + "ffn.1.weight"].T + sd[p + "ffn.1.bias"]) @ sd[p + "ffn.3.weight"].T + sd[p + "ffn.3.bias"]
        h = f + h2
    h = h * k
    h = relu6(h @ sd["dnn.0.weight"].T + sd["dnn.0.bias"])
    h = relu6(h @ sd["dnn.2.weight"].T + sd["dnn.2.bias"])
    z = h @ pd["0.weight"].T + pd["0.bias"]
    z = 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0)))
    return z @ pd["2.weight"].T + pd["2.bias"]


ENCODER_CASES = {
    "tiny": audio.TINY_AUDIO_CONFIG,
    "dilated": {
        **audio.TINY_AUDIO_CONFIG,
        "input_size": 24,
        "left_order": 3,
        "right_order": 2,
        "left_stride": 2,
        "num_right_layers": 2,
    },
}


def build(raw: dict, seed: int) -> tuple[audio.LongCatAudioEncoder, audio.AudioProjector, dict, dict]:
    cfg = audio.AudioConfig.from_json(raw, "config.json")
    encoder = audio.LongCatAudioEncoder(cfg).double().eval()
    projector = audio.AudioProjector(cfg.output_dim, 40).double().eval()
    sd, pd = random_state(encoder, seed), random_state(projector, seed + 1)
    encoder.load_state_dict(sd, strict=True)
    projector.load_state_dict(pd, strict=True)
    return encoder, projector, sd, pd


def padded_pair(raw: dict, T: int, short: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of two random feature sequences of T frames (float64), the second padded after `short`,
    and its mask."""
    x = torch.randn(2, T, raw["input_size"], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, short:] = False
    return x, mask


@pytest.mark.parametrize("case", sorted(ENCODER_CASES))
def test_encoder_projector_equal_reference_and_padding_does_not_leak(case: str) -> None:
    raw = ENCODER_CASES[case]
    encoder, projector, sd, pd = build(raw, seed=0)
    T, short = 17, 10
    x, mask = padded_pair(raw, T, short, seed=5)
    with torch.no_grad():
        out = projector(encoder(x, mask))
        alone = projector(encoder(x[1:, :short], mask[1:, :short]))
    for i, n in enumerate((T, short)):
        ref = ref_encoder_projector(sd, pd, raw, x[i, :n], torch.ones(n, dtype=torch.float64), False)
        torch.testing.assert_close(out[i, :n], ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out[1, :short], alone[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", sorted(ENCODER_CASES))
def test_official_batching_reproduces_official_padded_forward(case: str) -> None:
    """official_batching=True is the official forward on a padded batch, where LayerNorm(0) = bias
    of pad frames reaches the last valid frames of the shorter sequence through the right context."""
    raw = ENCODER_CASES[case]
    encoder, projector, sd, pd = build(raw, seed=3)
    T, short = 16, 9
    x, mask = padded_pair(raw, T, short, seed=7)
    with torch.no_grad():
        out = projector(encoder(x, mask, official_batching=True))
    ref = ref_encoder_projector(sd, pd, raw, x[1], mask[1].double(), False)
    torch.testing.assert_close(out[1], ref, rtol=1e-9, atol=1e-9)
    alone = ref_encoder_projector(sd, pd, raw, x[1, :short], torch.ones(short, dtype=torch.float64), False)
    reach = raw["num_right_layers"] * raw["right_order"] * raw["left_stride"]
    assert (out[1, short - 1] - alone[short - 1]).abs().max() > 1e-6
    torch.testing.assert_close(out[1, : short - reach], alone[: short - reach], rtol=1e-9, atol=1e-9)


def test_ctc_output_takes_part_in_backward() -> None:
    cfg = audio.AudioConfig.from_json(audio.TINY_AUDIO_CONFIG, "c.json")
    encoder = audio.LongCatAudioEncoder(cfg)
    x = torch.randn(1, 5, 1200)
    encoder(x, torch.ones(1, 5, dtype=torch.bool)).sum().backward()
    assert encoder.output.weight.grad is not None
    assert torch.count_nonzero(encoder.output.weight.grad) == 0


def test_real_size_parameter_counts() -> None:
    counts = audio.count_parameters(audio.AudioConfig(), llm_hidden_size=6144)
    c_in, hid, proj, vocab = 1200, 6144, 1536, 5252
    per_layer = 2 * proj + 2 * proj + (proj * hid + hid) + (hid * proj + proj)
    conv = proj * (16 * 11 + 6 * 12)  # 16 left-only layers (kernel 11), 6 with lookahead (12)
    encoder = (c_in * hid + hid + hid * proj) + 22 * per_layer + conv
    encoder += (proj * hid + hid) + (hid * hid + hid) + (hid * vocab + vocab)
    assert counts == {"audio_encoder": encoder, "audio_projector": 2 * (hid * hid + hid)}
    assert counts == {"audio_encoder": 512_209_028, "audio_projector": 75_509_760}
