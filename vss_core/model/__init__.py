"""LongCat-Flash-Omni as one torch module: vision + audio adaptors, the LongCat-Flash LLM, speech heads.

The checkpoint layout is the one the official loader reads (see MODEL_FACTS.md); the tiny checkpoint
written by `write_tiny_checkpoint` uses the same layout and goes through the same `load_omni`, only
the sizes differ:

    config.json, *.safetensors           LLM (transformers `LongcatFlashForCausalLM`), minus embed_tokens
    language_model_embedding.pt          text embedding (state dict of `llm.model.embed_tokens`)
    vision/{config.json, vision_model.pt, vision_projector.pt}
    audio/{config.json, preprocessor_config.json, global_cmvn, audio_encoder.pt, audio_projector.pt,
           audio_embeddings.pt, audio_output_layers.pt}
    audio_codec/config.yaml

Sequence of one training sample (token positions, left to right):

    [BOS] [ts_0][vision tokens of frames 0,1] [ts_1][vision tokens of frames 2,3] ...
    [audio-in tokens (one per 80 ms)] [SPEECH_START] [speech step 0] ... [speech step Fc-1] (padding)

Speech step t carries the sum of the 4 codebook embeddings of step t plus the text embedding of
TEXT_AUDIO_PAD. The acoustic codebooks (1..3) are delayed one step behind the semantic one (0):
step t holds semantic code t and acoustic codes t-1. The hidden state at SPEECH_START predicts step 0
and the one at step t predicts step t+1, for Fc+1 predictions: the last one is semantic EOS + the last
acoustic codes. Head i>0 adds the embedding (audio_embeddings[i-1]) of codebook i-1's token of the
same step, teacher-forced with the target during training.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.utils import ModelOutput
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import LongcatFlashConfig
from transformers.models.longcat_flash.modeling_longcat_flash import LongcatFlashMoE

from vss_core import experts
from vss_core.errors import ModelError, bullet_list

# Text token ids the sequence uses (tiny vocab of 128 fits them; the real tokenizer's ids replace them
# once the tokenizer is wired in).
TEXT_BOS = 1
TEXT_SPEECH_START = 3
TEXT_AUDIO_PAD = 4
TEXT_TIMESTAMP_BASE = 16  # timestamp of temporal group g is token TEXT_TIMESTAMP_BASE + g (clamped)

# Audio code ids: a codec code c of codebook k is embedded as row c + num_special_ids.
AUDIO_PAD = 0
AUDIO_BOS = 1  # fills the acoustic slots of step 0 (they are delayed one step)
AUDIO_EOS = 2  # semantic target after the last frame
IGNORE = -100
NUM_CODEBOOKS = 4

TINY_LLM_CONFIG: dict[str, Any] = {
    "vocab_size": 128,
    "hidden_size": 64,
    "num_layers": 1,
    "num_attention_heads": 4,
    "ffn_hidden_size": 128,
    "q_lora_rank": 32,
    "kv_lora_rank": 16,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "head_dim": 8,
    "n_routed_experts": 4,
    "moe_topk": 2,
    "zero_expert_num": 2,
    "expert_ffn_hidden_size": 32,
    "max_position_embeddings": 512,
}
TINY_VISION_CONFIG: dict[str, Any] = {
    "image_size": 56,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "in_channels": 3,
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 128,
    "spatial_merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
TINY_AUDIO_CONFIG: dict[str, Any] = {
    "num_mel_bins": 80,
    "splice": 8,
    "encoder_dim": 64,
    "encoder_layers": 2,
    "encoder_ffn_dim": 128,
    "memory_kernel_size": 11,
    "codebook_sizes": [64, 16, 16, 16],
    "num_special_ids": 32,
}
TINY_CODEC_YAML = "type: vss-tiny\nsample_rate: 16000\nhop_samples: 960\ncodebook_sizes: [64, 16, 16, 16]\nseed: 0\n"

_LAYOUT = (
    "config.json, *.safetensors, language_model_embedding.pt, "
    "vision/{config.json, vision_model.pt, vision_projector.pt}, "
    "audio/{config.json, preprocessor_config.json, global_cmvn, audio_encoder.pt, audio_projector.pt, "
    "audio_embeddings.pt, audio_output_layers.pt}, audio_codec/config.yaml"
)


# --- configs of the modality parts ------------------------------------------------------------


@dataclass(frozen=True)
class VisionConfig:
    image_size: int
    patch_size: int
    temporal_patch_size: int
    in_channels: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    spatial_merge_size: int
    image_mean: list[float]
    image_std: list[float]


@dataclass(frozen=True)
class AudioConfig:
    num_mel_bins: int
    splice: int
    encoder_dim: int
    encoder_layers: int
    encoder_ffn_dim: int
    memory_kernel_size: int
    codebook_sizes: list[int]
    num_special_ids: int


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        problems.append(f"{path}: file missing (a checkpoint directory holds {_LAYOUT})")
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        problems.append(f"{path}: not valid JSON ({exc}); re-download the checkpoint")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: must be a JSON object, got {type(data).__name__}")
        return None
    return data


def _section(cls: type, path: Path, raw: dict[str, Any] | None, problems: list[str]) -> Any:
    if raw is None:
        return None
    names = list(cls.__dataclass_fields__)
    missing = [n for n in names if n not in raw]
    if missing:
        problems.append(f"{path}: missing key(s) {', '.join(missing)}; the checkpoint config is incomplete")
        return None
    return cls(**{n: raw[n] for n in names})


def _llm_config(raw: dict[str, Any]) -> LongcatFlashConfig:
    skip = {"architectures", "model_type", "auto_map", "transformers_version"}
    kwargs = {k: v for k, v in raw.items() if k not in skip}
    return LongcatFlashConfig(**kwargs)


# --- modality modules ---------------------------------------------------------------------------


class _Block(nn.Module):
    """Pre-norm transformer block (vision encoder)."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class VisionModel(nn.Module):
    """ViT with a 3-D patch embedding (temporal x spatial patches), frames normalized inside."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p, t = cfg.patch_size, cfg.temporal_patch_size
        self.grid = cfg.image_size // p
        self.patch_embed = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel_size=(t, p, p), stride=(t, p, p))
        self.pos_embed = nn.Parameter(torch.zeros(self.grid * self.grid, cfg.hidden_size))
        self.blocks = nn.ModuleList(
            _Block(cfg.hidden_size, cfg.num_heads, cfg.intermediate_size) for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(cfg.hidden_size)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, F, 3, S, S], already normalised with image_mean/image_std by data preparation,
        F a multiple of temporal_patch_size -> [B, F / temporal_patch_size, grid, grid, hidden]."""
        b, f = frames.shape[:2]
        x = frames.transpose(1, 2)  # [B, 3, F, S, S]
        x = self.patch_embed(x)  # [B, D, G, grid, grid]
        g = x.shape[2]
        x = x.permute(0, 2, 3, 4, 1).reshape(b * g, self.grid * self.grid, -1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x).view(b, g, self.grid, self.grid, -1)


def pixel_unshuffle_tokens(x: torch.Tensor, merge: int) -> torch.Tensor:
    """[B, G, H, W, D] -> [B, G, (H/m)*(W/m), m*m*D]: merge each m x m patch neighbourhood into one token."""
    b, g, h, w, d = x.shape
    x = x.view(b, g, h // merge, merge, w // merge, merge, d).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, g, (h // merge) * (w // merge), merge * merge * d)


class _FSMNLayer(nn.Module):
    """Feed-forward + depthwise-convolution memory block (left context only: streamable)."""

    def __init__(self, dim: int, ffn: int, kernel: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim, bias=False)
        self.memory = nn.Conv1d(dim, dim, kernel_size=kernel, groups=dim, bias=False)
        self.kernel = kernel

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.fc2(F.relu(self.fc1(self.norm(x)))) * mask
        m = self.memory(F.pad(h.transpose(1, 2), (self.kernel - 1, 0))).transpose(1, 2)
        return (x + h + m) * mask


class AudioEncoder(nn.Module):
    """Global CMVN, 8-frame splice (80 ms per token), linear input, FSMN layers."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_proj = nn.Linear(cfg.num_mel_bins * cfg.splice, cfg.encoder_dim)
        self.layers = nn.ModuleList(
            _FSMNLayer(cfg.encoder_dim, cfg.encoder_ffn_dim, cfg.memory_kernel_size) for _ in range(cfg.encoder_layers)
        )
        self.norm = nn.LayerNorm(cfg.encoder_dim)

    def forward(self, fbank: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fbank [B, T, 80] (global CMVN already applied by data preparation) -> (tokens [B, ceil(T/splice), encoder_dim], token lengths [B])."""
        b, t, d = fbank.shape
        s = self.cfg.splice
        frame_mask = (torch.arange(t, device=fbank.device)[None] < lengths[:, None]).unsqueeze(-1)
        x = fbank * frame_mask
        x = F.pad(x, (0, 0, 0, (-t) % s)).reshape(b, -1, s * d)
        tok_lengths = (lengths + s - 1) // s
        mask = (torch.arange(x.shape[1], device=x.device)[None] < tok_lengths[:, None]).unsqueeze(-1).to(x.dtype)
        x = self.input_proj(x) * mask
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x), tok_lengths


def _mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))


# --- the composed model -------------------------------------------------------------------------


@dataclass
class OmniOutput(ModelOutput):
    # A ModelOutput (a dict) so DeepSpeed's ZeRO-3 hooks see the tensors inside; a plain dataclass
    # is opaque to them ("unknown inputs or outputs type") and the backward hooks may not fire.
    loss: torch.Tensor | None = None  # scalar: weighted mean of the codebook losses
    codebook_losses: torch.Tensor | None = None  # [4]: mean cross-entropy of each codebook over its targets


class OmniModel(nn.Module):
    """LongCat-Flash-Omni for video + speech in, speech out."""

    def __init__(self, llm_config: LongcatFlashConfig, vision_config: VisionConfig, audio_config: AudioConfig) -> None:
        super().__init__()
        if len(audio_config.codebook_sizes) != NUM_CODEBOOKS:
            raise ModelError(
                f"audio/config.json: codebook_sizes has {len(audio_config.codebook_sizes)} entries; "
                f"LongCat-Flash-Omni speaks with {NUM_CODEBOOKS} codebooks"
            )
        self.llm_config, self.vision_config, self.audio_config = llm_config, vision_config, audio_config
        hidden = llm_config.hidden_size
        # transformers' own experts would allocate gate_up_proj for the zero (identity) experts too.
        self.llm = experts.build_llm(llm_config)
        self.vision_model = VisionModel(vision_config)
        m = vision_config.spatial_merge_size
        self.vision_projector = _mlp(vision_config.hidden_size * m * m, hidden)
        self.audio_encoder = AudioEncoder(audio_config)
        self.audio_projector = _mlp(audio_config.encoder_dim, hidden)
        rows = [n + audio_config.num_special_ids for n in audio_config.codebook_sizes]
        self.audio_embeddings = nn.ModuleList(nn.Embedding(r, hidden) for r in rows)
        self.audio_heads = nn.ModuleList(nn.Linear(hidden, r, bias=False) for r in rows)

    # -- pieces --
    def _text(self, token: int, device: torch.device) -> torch.Tensor:
        token = min(token, self.llm_config.vocab_size - 1)
        return self.llm.model.embed_tokens(torch.tensor([token], device=device))  # [1, H]

    def _speech_targets(self, codes: torch.Tensor, code_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """codes [B, Fc, 4] -> (ids, labels), both [B, Fc+1, 4], with the one-step acoustic delay.

        ids: the token of each step and codebook (step 0's acoustic slots hold the AUDIO_BOS filler);
        labels: ids with IGNORE past each sample's end and on the filler (nothing to learn there).
        """
        b, fc, _ = codes.shape
        special = self.audio_config.num_special_ids
        steps = torch.arange(fc + 1, device=codes.device)[None]  # [1, Fc+1]
        n = code_lengths[:, None]
        sem = torch.cat([codes[:, :, 0] + special, torch.zeros_like(codes[:, :1, 0])], 1)
        sem = torch.where(steps == n, torch.full_like(sem, AUDIO_EOS), sem)
        sem = torch.where(steps <= n, sem, AUDIO_PAD)
        ac = torch.cat([torch.full_like(codes[:, :1, 1:], AUDIO_BOS), codes[:, :, 1:] + special], 1)
        ac = torch.where((steps <= n)[..., None], ac, AUDIO_PAD)
        ids = torch.cat([sem[..., None], ac], -1)
        labels = ids.clone()
        labels[:, :, 0] = torch.where(steps <= n, sem, IGNORE)
        labels[:, :, 1:] = torch.where(((steps >= 1) & (steps <= n))[..., None], ac, IGNORE)
        return ids, labels

    def _speech_inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, N, 4] -> summed codebook embeddings [B, N, H]."""
        return sum(emb(ids[..., k]) for k, emb in enumerate(self.audio_embeddings))

    def forward(
        self,
        frames: torch.Tensor,
        fbank: torch.Tensor,
        fbank_lengths: torch.Tensor,
        codes: torch.Tensor,
        code_lengths: torch.Tensor,
        codebook_weights: list[float] | None = None,
    ) -> OmniOutput:
        dtype = self.audio_projector[0].weight.dtype
        device = self.audio_projector[0].weight.device
        b = frames.shape[0]
        tp = self.vision_config.temporal_patch_size
        if frames.shape[1] % tp:  # repeat the last frame to fill the last temporal patch
            rep = frames[:, -1:].expand(-1, tp - frames.shape[1] % tp, -1, -1, -1)
            frames = torch.cat([frames, rep], 1)
        vis = self.vision_model(frames.to(device=device, dtype=dtype))
        vis = self.vision_projector(pixel_unshuffle_tokens(vis, self.vision_config.spatial_merge_size))  # [B,G,n,H]
        aud, aud_lengths = self.audio_encoder(fbank.to(device=device, dtype=dtype), fbank_lengths.to(device))
        aud = self.audio_projector(aud)  # [B, Ta, H]

        codes, code_lengths = codes.to(device), code_lengths.to(device)
        ids, labels = self._speech_targets(codes, code_lengths)  # [B, Fc+1, 4] each
        speech_in = self._speech_inputs(ids[:, :-1]) + self._text(TEXT_AUDIO_PAD, device)  # [B, Fc, H]

        prefix = [self._text(TEXT_BOS, device)]
        for g in range(vis.shape[1]):
            prefix.append(self._text(TEXT_TIMESTAMP_BASE + g, device))
            prefix.append(None)  # vision tokens of group g (per sample)
        seqs, starts = [], []
        for i in range(b):
            parts = [vis[i, (j - 2) // 2] if p is None else p for j, p in enumerate(prefix)]
            parts += [aud[i, : aud_lengths[i]], self._text(TEXT_SPEECH_START, device)]
            starts.append(sum(p.shape[0] for p in parts) - 1)
            parts.append(speech_in[i, : code_lengths[i]])
            seqs.append(torch.cat(parts, 0))
        lengths = torch.tensor([s.shape[0] for s in seqs], device=device)
        embeds = nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        attention_mask = (torch.arange(embeds.shape[1], device=device)[None] < lengths[:, None]).long()
        hidden = self.llm.model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).last_hidden_state

        # Hidden states that predict speech steps 0..Fc: SPEECH_START and each speech step position.
        n_pred = ids.shape[1]
        pos = torch.tensor(starts, device=device)[:, None] + torch.arange(n_pred, device=device)[None]
        pos = pos.clamp(max=hidden.shape[1] - 1)  # positions past a sample's end carry IGNORE targets
        h = hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))  # [B, Fc+1, H]

        weights = torch.tensor(codebook_weights or [1.0] * NUM_CODEBOOKS, device=device, dtype=torch.float32)
        if weights.numel() != NUM_CODEBOOKS:
            raise ModelError(f"codebook_weights must have {NUM_CODEBOOKS} values, got {weights.numel()}")
        losses = []
        for k, head in enumerate(self.audio_heads):
            # Head i sees head i-1's token of the same step (teacher-forced with the target here).
            x = h if k == 0 else h + self.audio_embeddings[k - 1](ids[..., k - 1])
            logits = head(x).float()
            losses.append(F.cross_entropy(logits.flatten(0, 1), labels[..., k].flatten(), ignore_index=IGNORE))
        codebook_losses = torch.stack(losses)
        loss = (codebook_losses * weights).sum() / weights.sum()
        return OmniOutput(loss=loss, codebook_losses=codebook_losses.detach())


# --- batching -----------------------------------------------------------------------------------


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad prepared samples into the keyword arguments of `OmniModel.forward`.

    Each sample has `frames` float32 [F, 3, S, S] (RGB in [0, 1]), `fbank` float32 [T, 80] and `codes`
    int64 [Fc, 4]. fbank and codes are zero-padded with lengths; frames are padded by repeating each
    sample's last frame (samples normally share the configured frame count).
    """
    nf = max(s["frames"].shape[0] for s in samples)
    frames = torch.stack(
        [torch.cat([s["frames"], s["frames"][-1:].expand(nf - s["frames"].shape[0], -1, -1, -1)]) for s in samples]
    )
    fbank = nn.utils.rnn.pad_sequence([s["fbank"] for s in samples], batch_first=True)
    codes = nn.utils.rnn.pad_sequence([s["codes"] for s in samples], batch_first=True)
    return {
        "frames": frames.float(),
        "fbank": fbank.float(),
        "fbank_lengths": torch.tensor([s["fbank"].shape[0] for s in samples], dtype=torch.long),
        "codes": codes.long(),
        "code_lengths": torch.tensor([s["codes"].shape[0] for s in samples], dtype=torch.long),
    }


# --- checkpoint ---------------------------------------------------------------------------------

# file (relative to the checkpoint dir) -> submodule of OmniModel whose state dict it holds
_PT_FILES: dict[str, str] = {
    "language_model_embedding.pt": "llm.model.embed_tokens",
    "vision/vision_model.pt": "vision_model",
    "vision/vision_projector.pt": "vision_projector",
    "audio/audio_encoder.pt": "audio_encoder",
    "audio/audio_projector.pt": "audio_projector",
    "audio/audio_embeddings.pt": "audio_embeddings",
    "audio/audio_output_layers.pt": "audio_heads",
}
_EMBED_KEY = "model.embed_tokens.weight"


def build_tiny_model(seed: int = 0) -> OmniModel:
    """The random-weight tiny model `write_tiny_checkpoint` saves (deterministic by seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OmniModel(
            _llm_config(TINY_LLM_CONFIG), VisionConfig(**TINY_VISION_CONFIG), AudioConfig(**TINY_AUDIO_CONFIG)
        )
        # Same std for every Linear/Embedding/Conv so the tiny model starts from sane logits.
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv3d)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for layer in model.llm.model.layers:
            nn.init.normal_(layer.mlp.experts.gate_up_proj, std=0.02)
            nn.init.normal_(layer.mlp.experts.down_proj, std=0.02)
        nn.init.normal_(model.vision_model.pos_embed, std=0.02)
    return model


def _write_codec_config(model_dir: Path) -> Path:
    try:
        from vss_core import codec  # written alongside; optional until it lands
    except ImportError:
        codec = None
    if codec is not None and hasattr(codec, "write_tiny_codec_config"):
        return codec.write_tiny_codec_config(model_dir)
    path = model_dir / "audio_codec" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TINY_CODEC_YAML)
    return path


def _submodule_state(model: OmniModel, name: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.get_submodule(name).state_dict().items()}


def write_tiny_checkpoint(out_dir: Path, seed: int = 0) -> Path:
    """Write a random-weight tiny model in the real checkpoint layout to out_dir (atomically).

    Raises:
        ModelError: out_dir exists and is not empty.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ModelError(f"{out_dir}: exists and is not empty; choose a new directory or delete it first")
    model = build_tiny_model(seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is an ordinary directory
    try:
        llm_cfg = dict(TINY_LLM_CONFIG, model_type="longcat_flash", architectures=["LongcatFlashOmniForCausalLM"])
        (tmp / "config.json").write_text(json.dumps(llm_cfg, indent=2))
        llm_state = {k: v for k, v in _submodule_state(model, "llm").items() if k != _EMBED_KEY}
        save_file(llm_state, str(tmp / "model.safetensors"))
        (tmp / "vision").mkdir()
        (tmp / "audio").mkdir()
        (tmp / "vision" / "config.json").write_text(json.dumps(TINY_VISION_CONFIG, indent=2))
        (tmp / "audio" / "config.json").write_text(json.dumps(TINY_AUDIO_CONFIG, indent=2))
        (tmp / "audio" / "preprocessor_config.json").write_text(
            json.dumps({"sampling_rate": 16000, "num_mel_bins": 80}, indent=2)
        )
        n_mel = TINY_AUDIO_CONFIG["num_mel_bins"]
        (tmp / "audio" / "global_cmvn").write_text(json.dumps({"mean": [0.0] * n_mel, "istd": [1.0] * n_mel}))
        for rel, name in _PT_FILES.items():
            torch.save(_submodule_state(model, name), tmp / rel)
        _write_codec_config(tmp)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _check_state(
    file: Path, found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], problems: list[str]
) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"{file}: missing weight(s) {', '.join(missing)}; the file is incomplete or from another model")
    if unexpected:
        problems.append(
            f"{file}: unexpected weight(s) {', '.join(unexpected)}; "
            "the file does not match the model its configs describe"
        )
    for key in sorted(set(found) & set(expected)):
        if tuple(found[key].shape) != tuple(expected[key].shape):
            problems.append(
                f"{file}: weight {key} has shape {tuple(found[key].shape)}, the configs give "
                f"{tuple(expected[key].shape)}; config and weights disagree"
            )


def _load_pt(path: Path, problems: list[str]) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        problems.append(f"{path}: file missing (a checkpoint directory holds {_LAYOUT})")
        return None
    try:
        # mmap: tensors are read when copied into the model, not all at once
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        problems.append(f"{path}: cannot be read as a weights-only torch file ({type(exc).__name__}: {exc})")
        return None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        problems.append(f"{path}: must hold a state dict (name -> tensor)")
        return None
    return state


def _shapes(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Meta tensors with the shapes of a (lazy) state dict, for `_check_state`."""
    return {k: torch.empty(tuple(v), device="meta") for k, v in state.items()}


def load_omni(
    model_dir: Path,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    zero_config: dict[str, Any] | None = None,
) -> OmniModel:
    """Build OmniModel from the checkpoint's configs and load every weight strictly.

    Weights are read lazily (safetensors `safe_open`, `.pt` files memory-mapped with
    `weights_only=True`) and checked against a meta-device build before anything is allocated. With
    `zero_config` (a DeepSpeed config with ZeRO stage 3) the model is built under `deepspeed.zero.Init`,
    so each rank holds only its partition, and each module's weights are copied in by rank 0 inside
    `GatheredParameters` — no rank ever holds a full copy of the model.

    `trust_remote_code` is accepted for the config's sake but unused: the LLM is transformers' native
    `LongcatFlashForCausalLM` (its MoE experts swapped for `vss_core.experts.RoutedExperts`, same
    names and math, routed experts only) and the modality parts are vss code, so no checkpoint code
    ever runs. A fused `gate_up_proj` that also holds zero-expert rows (saved from transformers' own
    experts module) is accepted: only its routed rows are read.

    Raises:
        ModelError: a file is missing or unreadable, a config key is missing, or a weight is missing,
            unexpected or of the wrong shape (all problems listed at once).
    """
    from safetensors import safe_open

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: not a directory; model.source must point at a checkpoint holding {_LAYOUT}")
    problems: list[str] = []
    llm_raw = _read_json(model_dir / "config.json", problems)
    vision_json, audio_json = model_dir / "vision/config.json", model_dir / "audio/config.json"
    vision_cfg = _section(VisionConfig, vision_json, _read_json(vision_json, problems), problems)
    audio_cfg = _section(AudioConfig, audio_json, _read_json(audio_json, problems), problems)
    _read_json(model_dir / "audio/preprocessor_config.json", problems)
    cmvn = _read_json(model_dir / "audio/global_cmvn", problems)
    if not (model_dir / "audio_codec/config.yaml").is_file():
        codec_yaml = model_dir / "audio_codec/config.yaml"
        problems.append(f"{codec_yaml}: file missing (a checkpoint directory holds {_LAYOUT})")
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        problems.append(f"{model_dir}: no *.safetensors file (the LLM weights; a checkpoint directory holds {_LAYOUT})")
    if problems:
        raise ModelError(f"checkpoint {model_dir} is incomplete:\n{bullet_list(problems)}")

    llm_config = _llm_config(llm_raw)
    with torch.device("meta"):
        expected = OmniModel(llm_config, vision_cfg, audio_cfg).state_dict()

    # full model key -> where to read it: ("st", shard, key, rows) or ("pt", loaded dict, key, None);
    # rows (or None for all) is how many leading rows of the stored tensor the model holds.
    sources: dict[str, tuple[str, Any, str, int | None]] = {}
    llm_shapes: dict[str, Any] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for k in f.keys():
                if k in llm_shapes:
                    problems.append(f"{shard}: weight {k} also appears in another shard")
                llm_shapes[k] = f.get_slice(k).get_shape()
                sources[f"llm.{k}"] = ("st", shard, k, None)
    llm_expected = {
        k[len("llm.") :]: v for k, v in expected.items() if k.startswith("llm.") and k != f"llm.{_EMBED_KEY}"
    }
    _fuse_per_expert_weights(llm_config, llm_shapes, sources, problems)
    _routed_rows_only(llm_config, llm_shapes, llm_expected, sources)
    where = shards[0] if len(shards) == 1 else model_dir / "*.safetensors"
    _check_state(where, _shapes(llm_shapes), llm_expected, problems)

    for rel, name in _PT_FILES.items():
        state = _load_pt(model_dir / rel, problems)
        if state is None:
            continue
        sub_expected = {k[len(name) + 1 :]: v for k, v in expected.items() if k.startswith(name + ".")}
        _check_state(model_dir / rel, state, sub_expected, problems)
        sources.update({f"{name}.{k}": ("pt", state, k, None) for k in state})

    n_mel = audio_cfg.num_mel_bins
    for key in ("mean", "istd"):
        if not isinstance(cmvn.get(key), list) or len(cmvn[key]) != n_mel:
            problems.append(f"{model_dir / 'audio/global_cmvn'}: key {key!r} must be a list of {n_mel} numbers")
    if problems:
        raise ModelError(f"checkpoint {model_dir} does not match its configs:\n{bullet_list(problems)}")

    if zero_config is not None:
        import deepspeed

        with deepspeed.zero.Init(config_dict_or_path=zero_config, dtype=dtype):
            model = OmniModel(llm_config, vision_cfg, audio_cfg)
    else:
        model = OmniModel(llm_config, vision_cfg, audio_cfg).to(dtype)
    _copy_weights(model, sources, partitioned=zero_config is not None)
    return model


_PER_EXPERT = re.compile(r"(?P<prefix>.+\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight")


def _fuse_per_expert_weights(
    config: LongcatFlashConfig,
    shapes: dict[str, Any],
    sources: dict[str, tuple[str, Any, str, int | None]],
    problems: list[str],
) -> None:
    """Map per-expert checkpoint weights onto the fused expert parameters.

    The published checkpoint (and transformers' `save_pretrained`) stores each expert as
    `...mlp.experts.{e}.{gate_proj,up_proj,down_proj}.weight`; the module holds
    `gate_up_proj[e] = cat(gate, up)` and `down_proj[e]`, as transformers' own loader fuses them
    (its `qwen2_moe` weight conversion, which `longcat_flash` uses). Rows of zero experts, if present,
    are ignored: zero experts are identities without weights.
    """
    groups: dict[str, dict[tuple[int, str], str]] = {}
    for key in list(shapes):
        m = _PER_EXPERT.fullmatch(key)
        if m:
            groups.setdefault(m["prefix"], {})[(int(m["e"]), m["proj"])] = key
    n = config.n_routed_experts
    for prefix, found in groups.items():
        missing = [f"{prefix}.{e}.{proj}.weight" for e in range(n) for proj in ("gate_proj", "up_proj", "down_proj")
                   if (e, proj) not in found]
        if missing:
            problems.append(f"per-expert weights missing under {prefix}: {', '.join(missing[:6])}"
                            + (f" and {len(missing) - 6} more" if len(missing) > 6 else ""))
            continue
        where = {found[(e, proj)]: sources[f"llm.{found[(e, proj)]}"][1] for e in range(n)
                 for proj in ("gate_proj", "up_proj", "down_proj")}
        gate, down = shapes[found[(0, "gate_proj")]], shapes[found[(0, "down_proj")]]
        for key in found.values():
            del shapes[key], sources[f"llm.{key}"]
        layer = prefix.removeprefix("llm.")
        shapes[f"{layer}.gate_up_proj"] = [n, 2 * gate[0], gate[1]]
        shapes[f"{layer}.down_proj"] = [n, *down]
        sources[f"llm.{layer}.gate_up_proj"] = ("experts", where, (
            [(found[(e, "gate_proj")], found[(e, "up_proj")]) for e in range(n)]), None)
        sources[f"llm.{layer}.down_proj"] = ("experts", where, ([(found[(e, "down_proj")],) for e in range(n)]), None)


def _routed_rows_only(
    config: LongcatFlashConfig,
    shapes: dict[str, Any],
    expected: dict[str, torch.Tensor],
    sources: dict[str, tuple[str, Any, str, int | None]],
) -> None:
    """Read only the routed experts' rows of a fused gate_up_proj that also has zero-expert rows.

    transformers 5.23's own experts module holds gate_up_proj rows for the zero (identity) experts
    too (MODEL_FACTS.md), so a state dict saved from it (or a tiny checkpoint of an older vss) has
    [routed + zero, 2 * ffn, hidden]. The zero experts never read those rows: dropping them is exact.
    """
    stored_rows = config.n_routed_experts + (config.zero_expert_num or 0)
    for key, shape in shapes.items():
        want = expected.get(key)
        if (
            key.endswith("mlp.experts.gate_up_proj")
            and want is not None
            and len(shape) == 3
            and shape[0] == stored_rows != want.shape[0]
            and tuple(shape[1:]) == tuple(want.shape[1:])
        ):
            shapes[key] = [want.shape[0], *shape[1:]]
            kind, where, name, _ = sources[f"llm.{key}"]
            sources[f"llm.{key}"] = (kind, where, name, want.shape[0])


def _copy_weights(
    model: nn.Module, sources: dict[str, tuple[str, Any, str, int | None]], partitioned: bool
) -> None:
    """Copy every parameter and persistent buffer from its source, module by module."""
    import contextlib

    from safetensors import safe_open

    handles: dict[Path, Any] = {}

    def tensor(shard: Path, name: str) -> torch.Tensor:
        if shard not in handles:
            handles[shard] = safe_open(str(shard), framework="pt")
        return handles[shard].get_tensor(name)

    def read(key: str) -> torch.Tensor:
        kind, where, name, rows = sources[key]
        if kind == "pt":
            return where[name]
        if kind == "experts":  # per-expert weights fused: stack experts, gate and up concatenated
            return torch.stack([torch.cat([tensor(where[k], k) for k in keys]) for keys in name])
        if rows is not None:
            tensor(where, name)  # opens the handle
            return handles[where].get_slice(name)[:rows]
        return tensor(where, name)

    if partitioned:
        import deepspeed
        import deepspeed.comm as dist

        writer = dist.get_rank() == 0
    with torch.no_grad():
        for prefix, module in model.named_modules():
            params = [(n, p) for n, p in module.named_parameters(prefix=prefix, recurse=False)]
            gather = (
                deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=0)
                if partitioned and params
                else contextlib.nullcontext()
            )
            with gather:
                if not partitioned or writer:
                    for name, p in params:
                        p.data.copy_(read(name).to(p.dtype))
            for name, b in module.named_buffers(prefix=prefix, recurse=False):
                if name in sources:
                    b.data.copy_(read(name).to(b.dtype))


# --- helpers for training / planning ------------------------------------------------------------


def zero3_leaf_classes() -> list[type]:
    """Module classes DeepSpeed ZeRO-3 must gather whole (ranks route tokens to different experts)."""
    return [LongcatFlashMoE]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; ZeRO-3 partitioned params count by their full size."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", None) or p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total
