"""LongCat-Audio-Codec in vss: the speech LongCat-Flash-Omni hears as targets and speaks.

4 codebooks per 60 ms frame at 16 kHz (hop 960): a semantic code in [0, 8192) from the semantic
tokenizer (`semantic`) and 3 acoustic codes in [0, 8100) = a*90+b from the acoustic encoder and its
grouped residual quantizers (`acoustic`, `quantizer`); the decoder (`decoder`) turns them back into a
16 kHz or 24 kHz waveform. Each part follows the official code (meituan-longcat/LongCat-Audio-Codec,
`networks/`, `semantic_tokenizer_general/`) and loads its official checkpoint by its real key names.

Files, as the Hub repo `meituan-longcat/LongCat-Audio-Codec` lays them out (`model.codec_source`):

    ckpts/LongCatAudioCodec_encoder.pt         semantic tokenizer (semantic_tokenizer.*) + acoustic
                                               encoder (encoder.*, acoustic_quantizer.*)
    ckpts/LongCatAudioCodec_encoder_cmvn.npy   the semantic tokenizer's CMVN stats
    ckpts/LongCatAudioCodec_decoder_16k_4codebooks.pt (and the 24k ones)
    configs/*.yaml, semantic_tokenizer_general/configs/*.yaml   optional: the GitHub repo's configs;
                                               absent, vss uses the official values it carries

The omni checkpoint names its decoder in `audio_codec/config.yaml` (the official post-processor's
`load_decoder(config_path)`); its `ckpt_path` is resolved against the checkpoint's `audio_codec/`,
the checkpoint, then the codec directory. The official encoder load is `strict=False`; vss names
every missing, unexpected or mis-shaped key instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from vss_core.codec import acoustic, semantic
from vss_core.codec import decoder as decoder_lib
from vss_core.codec.decoder import DecoderConfig
from vss_core.configfile import read_mapping
from vss_core.errors import ModelError, bullet_list
from vss_core.stamps import size_mtime

SAMPLE_RATE = acoustic.SAMPLE_RATE
HOP_SAMPLES = acoustic.HOP_SAMPLES
FRAME_RATE = SAMPLE_RATE / HOP_SAMPLES
ENCODER_YAML = Path("configs/LongCatAudioCodec_encoder.yaml")
ENCODER_CKPT = Path("ckpts/LongCatAudioCodec_encoder.pt")
ENCODER_CMVN = Path(semantic.CMVN_FILE)
SEMANTIC_YAMLS = (Path(semantic.CONFIG_DIR) / semantic.TOKENIZER_YAML, Path(semantic.CONFIG_DIR) / semantic.INFER_YAML)
DECODER_16K = "ckpts/LongCatAudioCodec_decoder_16k_4codebooks.pt"
TINY_DECODER = DecoderConfig.tiny("16k")


def encoder_configs(codec_dir: Path) -> tuple[semantic.SemanticTokenizerConfig, acoustic.AcousticEncoderConfig]:
    """The codec directory's own configs, or the official values where it has none (Hub snapshot)."""
    problems: list[str] = []
    sem_cfg, ac_cfg = semantic.OFFICIAL_SEMANTIC_CONFIG, acoustic.AcousticEncoderConfig.official()
    tok_path, infer_path = (codec_dir / p for p in SEMANTIC_YAMLS)
    if tok_path.is_file() or infer_path.is_file():
        tok, inf = read_mapping(tok_path, problems), read_mapping(infer_path, problems)
        if tok is not None and inf is not None:
            try:
                sem_cfg = semantic.SemanticTokenizerConfig.from_yaml_dicts(tok, inf, str(codec_dir))
            except ModelError as exc:
                problems.append(str(exc))
    if (codec_dir / ENCODER_YAML).is_file():
        raw = read_mapping(codec_dir / ENCODER_YAML, problems)
        if raw is not None:
            try:
                ac_cfg = acoustic.AcousticEncoderConfig.from_yaml(
                    raw.get("codec_config", raw), str(codec_dir / ENCODER_YAML)
                )
            except ModelError as exc:
                problems.append(str(exc))
    if problems:
        raise ModelError(f"codec {codec_dir}: invalid config:\n{bullet_list(problems)}")
    return sem_cfg, ac_cfg


def _require(codec_dir: Path, rels: list[Path]) -> None:
    missing = [str(codec_dir / r) for r in rels if not (codec_dir / r).is_file()]
    if missing:
        raise ModelError(
            f"codec {codec_dir} is incomplete: missing {', '.join(missing)}. model.codec_source must be "
            "LongCat-Audio-Codec (the Hub repo meituan-longcat/LongCat-Audio-Codec, or `vss tiny-model` for the demo)."
        )


def encoder_fingerprint(codec_dir: Path) -> str:
    """A key over what the encoder's codes depend on (configs, checkpoint size/mtime), for caches.

    Raises:
        ModelError: a file is missing or a config is invalid.
    """
    codec_dir = Path(codec_dir)
    _require(codec_dir, [ENCODER_CKPT, ENCODER_CMVN])
    # Remembered per process while no file it reads changes (size, mtime): preparation asks once per
    # sample, and parsing the YAML configs each time cost ~12 ms a sample (bench/bench_data.py).
    stats = [
        (str(rel), *size_mtime(codec_dir / rel)) for rel in (ENCODER_CKPT, ENCODER_CMVN, ENCODER_YAML, *SEMANTIC_YAMLS)
    ]
    key = (str(codec_dir.resolve()), tuple(stats))
    if key not in _FINGERPRINTS:
        sem_cfg, ac_cfg = encoder_configs(codec_dir)
        h = hashlib.sha256(repr((sem_cfg, ac_cfg)).encode())
        for rel, size, mtime in stats[:2]:
            h.update(f"{rel}:{size}:{mtime}".encode())
        _FINGERPRINTS.clear()
        _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]


_FINGERPRINTS: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


class CodecEncoder(torch.nn.Module):
    """Waveform -> the 4 codec ids per 60 ms frame the LLM speaks in (semantic first)."""

    sample_rate = SAMPLE_RATE
    frame_rate = FRAME_RATE

    def __init__(self, sem_cfg: semantic.SemanticTokenizerConfig, ac_cfg: acoustic.AcousticEncoderConfig) -> None:
        super().__init__()
        self.semantic_tokenizer = semantic.SemanticTokenizer(sem_cfg)
        self.acoustic = acoustic.AcousticEncoder(ac_cfg)

    @torch.no_grad()
    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """[samples] float32 in [-1, 1] at 16 kHz (at most 30 s) -> int64 [frames, 4], frames = ceil(L/960).

        As the official `LongCatAudioCodecEncoder.forward`: the wave is right-padded to a multiple of
        960 and both paths encode the whole padded signal, so they give the same number of frames.

        Raises:
            ValueError: empty or longer than the codec's 30 s.
        """
        wave = self.acoustic.preprocess(wave.reshape(1, -1).float())
        n = torch.tensor([wave.shape[-1]])
        sem, _ = self.semantic_tokenizer(wave, n)
        ac, _ = self.acoustic.encode(wave)
        frames = min(sem.shape[1], ac.shape[1])
        return torch.cat([sem[0, :frames, None], ac[0, :frames]], dim=-1).to(torch.int64)


def load_encoder(codec_dir: Path) -> CodecEncoder:
    """The codec encoder of a LongCat-Audio-Codec directory, every key checked, eval mode, fp32.

    Raises:
        ModelError: a file is missing, a config invalid, or a checkpoint key missing/unexpected/mis-shaped.
    """
    codec_dir = Path(codec_dir)
    _require(codec_dir, [ENCODER_CKPT, ENCODER_CMVN])
    enc = CodecEncoder(*encoder_configs(codec_dir))
    state = acoustic.read_checkpoint(codec_dir / ENCODER_CKPT)
    problems: list[str] = []
    try:
        enc.semantic_tokenizer.load_cmvn_file(codec_dir / ENCODER_CMVN)
        enc.semantic_tokenizer.load_checkpoint_state(state, str(codec_dir / ENCODER_CKPT))
    except ModelError as exc:
        problems.append(str(exc))
    try:
        rest = enc.acoustic.load_official_state_dict(state, str(codec_dir / ENCODER_CKPT))
        stray = [k for k in rest if not k.startswith(semantic.CHECKPOINT_PREFIX)]
        if stray:
            problems.append(f"{codec_dir / ENCODER_CKPT}: unexpected key(s) {', '.join(sorted(stray)[:12])}")
    except ModelError as exc:
        problems.append(str(exc))
    if problems:
        raise ModelError(f"codec encoder {codec_dir} does not load:\n{bullet_list(problems)}")
    return enc.eval()


# --- the decoder ------------------------------------------------------------------------------------


@dataclass
class DecoderFiles:
    config: DecoderConfig
    checkpoint: Path


def decoder_files(model_dir: Path, codec_dir: Path | None) -> DecoderFiles:
    """The decoder the omni checkpoint's `audio_codec/config.yaml` names, and where its weights are.

    Raises:
        ModelError: the config is missing/invalid or its ckpt_path is found nowhere.
    """
    path = Path(model_dir) / "audio_codec" / "config.yaml"
    problems: list[str] = []
    if not path.is_file():
        raise ModelError(f"{path}: file missing (the speech decoder's config of the checkpoint)")
    raw = read_mapping(path, problems)
    if raw is not None:
        section = raw.get("codec_config", raw)
        try:
            cfg = DecoderConfig.from_yaml(section, str(path))
        except ModelError as exc:
            problems.append(str(exc))
        ckpt = section.get("ckpt_path") if isinstance(section, dict) else None
        if not isinstance(ckpt, str) or not ckpt:
            problems.append(f"{path}: codec_config.ckpt_path must name the decoder's .pt file")
    if problems:
        raise ModelError(f"decoder config {path} is invalid:\n{bullet_list(problems)}")
    candidates = [Path(ckpt)] if Path(ckpt).is_absolute() else [path.parent / Path(ckpt).name, Path(model_dir) / ckpt]
    if not Path(ckpt).is_absolute() and codec_dir is not None:
        candidates.append(Path(codec_dir) / ckpt)
    for c in candidates:
        if c.is_file():
            return DecoderFiles(cfg, c)
    raise ModelError(
        f"{path}: ckpt_path {ckpt!r} found nowhere (looked at {', '.join(map(str, candidates))}); "
        "download the codec (model.codec_source) or fix the path"
    )


def load_decoder(model_dir: Path, codec_dir: Path | None) -> decoder_lib.Decoder:
    """The speech decoder of the omni checkpoint, loaded strictly, eval mode (`sample_rate` = its output rate).

    Raises:
        ModelError: see `decoder_files`, or a key missing/unexpected/mis-shaped.
    """
    files = decoder_files(model_dir, codec_dir)
    dec = decoder_lib.Decoder.from_checkpoint(files.checkpoint, files.config)
    dec.sample_rate = dec.output_rate
    return dec.eval()


def decode_codes(dec: decoder_lib.Decoder, codes: torch.Tensor) -> torch.Tensor:
    """int64 [frames, 4] raw codec ids (column 0 semantic) -> float32 [samples] at the decoder's rate."""
    if codes.numel() == 0:
        return torch.zeros(0)
    return dec.decode(codes[None, :, 0], codes[None, :, 1:])[0].float()


def write_decoder_config(path: Path, cfg: DecoderConfig, ckpt_path: str = DECODER_16K) -> Path:
    """Write a decoder config in the official yaml layout (`configs/LongCatAudioCodec_decoder_*.yaml`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"codec_config": {**cfg.to_yaml(), "ckpt_path": ckpt_path}}, sort_keys=False))
    return path


def _calibration_speech(seconds: float = 6.0) -> torch.Tensor:
    """Speech-like audio (the demo's harmonic voice at several pitches) to place tiny codebooks on."""
    import numpy as np

    from vss_core import demo

    rng = np.random.default_rng(1234)
    parts = [demo._speech_pair(rng, seconds / 3, (c, 0, 0))[i % 2] for i, c in enumerate((0, 128, 255))]
    return torch.from_numpy(np.concatenate(parts)).float()


@torch.no_grad()
def _calibrate(enc: CodecEncoder) -> None:
    """Put every tiny codebook entry on a latent of real-looking speech, as training leaves them.

    Random codebooks all lose to one entry (the nearest-entry search of a random codebook picks the
    same code for every frame); k-means-like entries spread over the latents make the tiny codes
    follow the signal. Entries are latents of evenly spaced calibration frames, stage by stage on the
    residual (semantic: L2-normalised hidden states, as the official search compares them).
    """
    wave = enc.acoustic.preprocess(_calibration_speech()[None])
    hidden, _ = enc.semantic_tokenizer.encode_hidden(wave, torch.tensor([wave.shape[-1]]))
    h = torch.nn.functional.normalize(hidden[0], dim=-1)  # [F, d]
    cb = enc.semantic_tokenizer.kmeans.codebook  # [d, K]
    pick = torch.linspace(0, h.shape[0] - 1, cb.shape[1]).round().long()
    cb.copy_((h[pick] + 0.01 * torch.randn_like(h[pick])).t())
    z, _ = enc.acoustic.encode_latents(wave)
    residual = z
    for stage in enc.acoustic.acoustic_quantizer.quantizers:
        for proj, book in ((stage.in_proj_a, stage.codebook_a), (stage.in_proj_b, stage.codebook_b)):
            lat = proj(residual)[0].t()  # [F, d]
            idx = torch.linspace(0, lat.shape[0] - 1, book.weight.shape[0]).round().long()
            book.weight.copy_(lat[idx] + 0.01 * torch.randn_like(lat[idx]))
        z_q, _, _ = stage(residual)
        residual = residual - z_q


def write_tiny_codec(codec_dir: Path, seed: int = 0) -> Path:
    """A random-weight LongCat-Audio-Codec of tiny sizes in the official repo layout (configs + ckpts).

    Hop 960 at 16 kHz and the 4-codebook id ranges as the real codec ([0, 64) semantic, [0, K*K)
    acoustic, tiny K); the semantic tokenizer's codebook is spread around its hidden states so the
    codes vary with the input (random N(0,1) centroids would all lose to one).
    """
    codec_dir = Path(codec_dir)
    sem_cfg, ac_cfg = semantic.TINY_SEMANTIC_CONFIG, acoustic.AcousticEncoderConfig.tiny()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = CodecEncoder(sem_cfg, ac_cfg)
        dec = decoder_lib.Decoder(TINY_DECODER)
        for m in (enc, dec):
            for name, p in m.named_parameters():
                if p.dim() >= 2 and "weight_g" not in name:
                    torch.nn.init.normal_(p, std=0.3)
        _calibrate(enc)
    (codec_dir / "ckpts").mkdir(parents=True, exist_ok=True)
    for rel, data in zip(SEMANTIC_YAMLS, sem_cfg.to_yaml_dicts()):
        (codec_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (codec_dir / rel).write_text(yaml.safe_dump(data, sort_keys=False))
    (codec_dir / ENCODER_YAML).parent.mkdir(parents=True, exist_ok=True)
    (codec_dir / ENCODER_YAML).write_text(
        yaml.safe_dump({"codec_config": {**ac_cfg.to_yaml(), "ckpt_path": str(ENCODER_CKPT)}}, sort_keys=False)
    )
    write_decoder_config(codec_dir / "configs" / "LongCatAudioCodec_decoder_16k_4codebooks.yaml", TINY_DECODER)
    dim = sem_cfg.fbank.feature_dim
    semantic.write_cmvn(codec_dir / ENCODER_CMVN, torch.full((dim,), 8.0), torch.full((dim,), 2.0))
    state = {f"{semantic.CHECKPOINT_PREFIX}{k}": v for k, v in enc.semantic_tokenizer.state_dict().items()}
    state.update(enc.acoustic.state_dict())
    torch.save(state, codec_dir / ENCODER_CKPT)
    torch.save(dec.state_dict(), codec_dir / DECODER_16K)
    return codec_dir
