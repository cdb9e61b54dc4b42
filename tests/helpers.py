"""Small helpers several test modules share."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import hf_raise_for_status, validate_repo_id

from vss_core import evaluate
from vss_core.config import DataConfig
from vss_core.errors import HubError


def data_config(root: Path, **changes) -> DataConfig:
    """The data settings the data tests use: 8 frames at 2 fps, 10 s of audio, one worker, and the
    validation cache beside the dataset (in tmp_path, never the user's home)."""
    base = {
        "root": str(root),
        "video_frames": 8,
        "video_fps": 2.0,
        "audio_seconds": 10.0,
        "workers": 1,
        "validation_cache": str(Path(root).parent / "validation-cache"),
    }
    return DataConfig(**(base | changes))


def uncached_config(root: Path, **changes) -> DataConfig:
    """`data_config` without the validation cache."""
    return data_config(root, **({"validation_cache": None} | changes))


def prepare_all(root, cfg, model_dir, codec_dir, out, **kw):
    """Validate the dataset of `cfg` and prepare every sample of it (valid or not) into `out`."""
    from vss_core import data

    report = data.validate_dataset(cfg)
    return data.prepare_dataset(report.samples, cfg, model_dir, codec_dir, out, **kw)


def audio_frames(seconds: float) -> int:
    """<|audio_pad|> count of the official rule: (L - 400) // 160 + 1 fbank frames, spliced 8 to 1."""
    frames = (int(seconds * 16000) - 400) // 160 + 1
    return (frames + 7) // 8


def prepare_demo_sample(data_dir: Path, model_dir, codec_dir, out: Path, *, frames: int, seconds: float, index=0):
    """Sample `index` of the demo dataset at `data_dir` validated and prepared alone (`frames` frames at
    2 fps, `seconds` of audio, one worker; the validation cache in `out`) into out/prep-<index>.
    Returns the prepared item, the data settings and the sample folder."""
    from vss_core import data

    cfg = DataConfig(
        root=str(data_dir),
        video_frames=frames,
        video_fps=2.0,
        audio_seconds=seconds,
        workers=1,
        validation_cache=str(out / "validation-cache"),
    )
    sample = data.select_samples(data.validate_dataset(cfg), "fail")[index]
    data.prepare_dataset([sample], cfg, model_dir, codec_dir, out / f"prep-{index}")
    (item,) = data.load_prepared(out / f"prep-{index}")
    return item, cfg, Path(sample.path)


# the video of every demo sample (demo.write_demo_dataset) as probing describes it
DEMO_VIDEO = {"frames": 20, "fps": 10.0, "width": 96, "height": 80, "duration_s": 2.0, "codec": "h264"}


def write_jsonl(path: Path, lines) -> Path:
    """A JSONL file: each line a JSON object, or a string written as it is."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# --- generation and inference ---------------------------------------------------------------------

INFER_DATA = {"video_frames": 4, "video_fps": 2.0, "audio_seconds": 2.0, "workers": 1}
BIG = 1e4  # a forced logit: survives the repetition penalty (1e4 / 1.1**30 >> 0)


def lora_model(model_dir, seed: int = 0):
    """The tiny model with LoRA on attention, projectors and speech heads, its B factors random (eval mode)."""
    from vss_core import lora
    from vss_core import model as omni
    from vss_core.config import LoraConfig

    peft_model = lora.apply_lora(
        omni.load_omni(model_dir),
        LoraConfig(rank=4, alpha=8, dropout=0.0, targets=["attention", "projectors", "audio_heads"]),
    )
    gen = torch.Generator().manual_seed(seed)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: make the adapter matter
            p.data = torch.randn(p.shape, generator=gen) * 0.3
    return peft_model.eval()


def forward_hidden(model, batch: dict) -> torch.Tensor:
    """The training forward's internals (OmniModel.forward) up to the LLM: the last hidden states of the
    first sample of a collated batch."""
    embeds = model.embed(
        batch["input_ids"],
        batch["codec_ids"],
        batch["pixel_values"],
        batch["grid_shapes"],
        batch["audio_features"],
        batch["audio_mask"],
    )
    return model.llm.model(
        inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state[0]


class Forcer:
    """Forward hooks that force the picks of the text head and the 4 speech heads, step by step.

    `text(t)` / `audio(t, i)` give the id to force at generation step t (head i); the real logits of
    every call are recorded before they are replaced by a one-hot of BIG.
    """

    def __init__(self, model, text, audio):
        self.t, self.text, self.audio = 0, text, audio
        self.text_logits: list[torch.Tensor] = []
        self.audio_logits: list[list[torch.Tensor]] = []
        heads = model.audio_output_layer.audio_output_layers
        self.hooks = [h.register_forward_hook(self._head(i)) for i, h in enumerate(heads)]
        self.hooks.append(model.llm.lm_head.register_forward_hook(self._lm_head))

    @staticmethod
    def _one_hot(like: torch.Tensor, idx: int) -> torch.Tensor:
        out = torch.zeros_like(like)
        out[..., idx] = BIG
        return out

    def _head(self, i):
        def hook(_m, _inp, out):
            if i == 0:
                self.audio_logits.append([])
            self.audio_logits[-1].append(out.detach().clone())
            return self._one_hot(out, self.audio(self.t, i))

        return hook

    def _lm_head(self, _m, _inp, out):  # the last call of a step
        self.text_logits.append(out.detach().clone())
        forced = self._one_hot(out, self.text(self.t))
        self.t += 1
        return forced

    def remove(self):
        for h in self.hooks:
            h.remove()


# --- errors as huggingface_hub and httpx raise them ---------------------------------------------


URL = "https://huggingface.co/api/models/org/repo"


def hub_http_error(status: int) -> HfHubHTTPError:
    """The error huggingface_hub raises for an HTTP answer, built as it builds it (hf_raise_for_status)."""
    response = httpx2.Response(status, request=httpx2.Request("GET", URL), json={"error": "injected"})
    with pytest.raises(HfHubHTTPError) as err:
        hf_raise_for_status(response)
    return err.value


def bad_repo_id_error() -> HFValidationError:
    with pytest.raises(HFValidationError) as err:
        validate_repo_id("org/../bad name")
    return err.value


def connect_error() -> httpx2.ConnectError:
    return httpx2.ConnectError("connection refused", request=httpx2.Request("GET", URL))


def hub_error(retryable: bool) -> HubError:
    err = HubError("upload.repo_id org/x: the Hub failed")
    err.retryable = retryable
    return err


# --- an evaluation report ------------------------------------------------------------------------


def eval_report(tmp_path):
    """An EvalReport of adapter vs base, with its plots drawn from a metrics.jsonl under tmp_path."""
    report = evaluate.EvalReport(
        adapter_dir=str(tmp_path),
        adapter_sha256="0" * 64,
        samples=["03", "07"],
        settings={},
        scores=[],
        summary={
            "adapter": {"loss": 2.29, "loss_text": 3.18, "eos_rate": 0.5, "mcd": 90.0, "text_wer": 1.0},
            "base": {"loss": 8.48, "loss_text": 6.28, "eos_rate": 0.0, "mcd": 95.0, "text_wer": 6.6},
        },
    )
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        "\n".join(json.dumps({"step": i, "loss": 9.0 - i, "loss_text": 6.0 - i / 2}) for i in range(1, 6))
        + "\nnot json\n"
    )
    report.plots = evaluate.plot_all(report, tmp_path / "eval", metrics)
    return report


# --- the codec's official math, recomputed with plain tensor ops from a state dict ------------------
# (LongCat-Audio-Codec networks/modules/layers.py weight norm, networks/quantizers/auto_grvq.py; nothing from vss)


def ref_wn_weight(sd, p):
    """Legacy weight norm, dim 0 (the input channel for a transposed conv): g * v / ||v|| with the norm
    over every dim but 0."""
    v, g = sd[p + "weight_v"], sd[p + "weight_g"]
    norm = v.reshape(v.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))
    return g * v / norm


def ref_conv(sd, p, x, **kw):
    """A weight-normed Conv1d of the state dict under prefix p."""
    return F.conv1d(x, ref_wn_weight(sd, p), sd[p + "bias"], **kw)


def ref_snake(x, alpha):
    """Snake activation: x + sin(alpha x)^2 / alpha (alpha + 1e-9 as the official one)."""
    return x + 1.0 / (alpha + 1e-9) * torch.sin(alpha * x) ** 2


def ref_nearest(latents, codebook):
    """Nearest entry after L2-normalising both sides (auto_grvq decode_latents), via explicit distances."""
    e = latents.permute(0, 2, 1)  # [B, T, d]
    e = e / e.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    c = codebook / codebook.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    dist = ((e[:, :, None, :] - c[None, None]) ** 2).sum(-1)  # [B, T, K]
    return dist.argmin(dim=-1)


def ref_quantize(sd, prefix, z, n, k):
    """AutoGroupResidualVectorQuantize.forward (eval): per stage two searches, out_proj, residual."""
    residual, z_q, codes = z, torch.zeros_like(z), []
    for i in range(n):
        p = f"{prefix}quantizers.{i}."
        parts, idx = [], []
        for half in ("a", "b"):
            lat = ref_conv(sd, f"{p}in_proj_{half}.", residual)
            book = sd[f"{p}codebook_{half}.weight"]
            nearest = ref_nearest(lat, book)
            parts.append(ref_conv(sd, f"{p}out_proj_{half}.", book[nearest].permute(0, 2, 1)))
            idx.append(nearest)
        out = torch.cat(parts, dim=1)
        z_q, residual = z_q + out, residual - out
        codes.append(idx[0] * k + idx[1])
    return z_q, torch.stack(codes, dim=-1)  # [B, D, T], [B, T, n]


def randomize(module, seed=0, scale=0.5):
    """Random weights for a codec module (in place): Snake alphas and weight-norm gains positive (0.5 to
    1.5), the rest normal with std `scale`."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("alpha", "weight_g")):  # Snake frequencies and weight-norm gains: positive
                p.copy_(0.5 + torch.rand(p.shape, generator=gen, dtype=p.dtype))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module
