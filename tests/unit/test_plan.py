"""The memory planner, on the real model's config (never allocated: meta device or formulas from
config fields) and on the tiny model (built for real and compared). Figures the tests assert are
derived here from the config, not copied from the planner's output."""

import dataclasses
import json

import pytest
import torch
from transformers import LongcatFlashConfig
from transformers.models.longcat_flash.modeling_longcat_flash import LongcatFlashMoE

from deployments import cli
from vss_core import config, plan
from vss_core.errors import ConfigError

GiB = 1024**3
REAL = LongcatFlashConfig()
# One layer's routed experts as a correctly sized module allocates them: gate_up [E, 2f, h] + down [E, h, f].
ROUTED_LEAF = REAL.n_routed_experts * 3 * REAL.expert_ffn_hidden_size * REAL.hidden_size
ROUTER = REAL.hidden_size * (REAL.n_routed_experts + REAL.zero_expert_num)
LEAF_BYTES = 2 * (ROUTED_LEAF + ROUTER)  # bf16


@pytest.fixture(scope="module")
def real():
    return plan.real_model_shape()


def machine(gpus, gpu_gib, ram, disk=None, **kw):
    return plan.Machine(gpus_per_node=gpus, gpu_memory_gib=gpu_gib, ram_gib=ram, disk_gib=disk, **kw)


def test_moe_leaf_counts_routed_experts_only_and_matches_transformers_module_when_it_allocates_zero_experts(real):
    assert 19.3e9 < ROUTED_LEAF < 19.4e9  # MODEL_FACTS: 19.3B params, ~38.7 GB bf16
    assert plan.count_params(real).moe_leaf == ROUTED_LEAF + ROUTER
    with torch.device("meta"):
        module = LongcatFlashMoE(REAL)  # transformers 5.23: gate_up_proj sized for routed + zero experts
    allocated = sum(p.numel() for p in module.parameters())
    oversized = real.model_copy(update={"allocated_zero_experts": True})
    assert plan.count_params(oversized).moe_leaf == allocated
    assert (
        allocated - (ROUTED_LEAF + ROUTER) == REAL.zero_expert_num * 2 * REAL.expert_ffn_hidden_size * REAL.hidden_size
    )


def test_real_llm_is_about_561b_params_and_1_12_tb_bf16(real):
    counts = plan.count_params(real)
    assert 560e9 < counts.llm < 561.5e9  # MODEL_FACTS: ~560.7B
    assert 1.12e12 < 2 * counts.total < 1.13e12


def test_tiny_model_counts_match_the_built_model(tiny_model_dir):
    from vss_core import lora, model

    built = model.load_omni(tiny_model_dir)
    shape = plan.read_model_shape(tiny_model_dir)
    counts = plan.count_params(shape)  # the default plans what vss allocates: routed experts only
    assert counts.total == sum(p.numel() for p in built.parameters())
    assert counts.parts == {name: sum(p.numel() for p in part.parameters()) for name, part in built.named_children()}
    cfg = config.load_config("cpu-demo").lora
    peft_model = lora.apply_lora(built, cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert plan.count_lora(shape, cfg.targets, cfg.rank).params == trainable


def test_attention_lora_at_r16_is_about_53m_and_experts_lora_is_billions(real):
    per_sublayer = sum(
        i + o
        for i, o in [
            (REAL.hidden_size, REAL.q_lora_rank),
            (REAL.q_lora_rank, REAL.num_attention_heads * (REAL.qk_nope_head_dim + REAL.qk_rope_head_dim)),
            (REAL.hidden_size, REAL.kv_lora_rank + REAL.qk_rope_head_dim),
            (REAL.kv_lora_rank, REAL.num_attention_heads * (REAL.qk_nope_head_dim + REAL.v_head_dim)),
            (REAL.num_attention_heads * REAL.v_head_dim, REAL.hidden_size),
        ]
    )
    assert plan.count_lora(real, ["attention"], 16).params == 16 * per_sublayer * 2 * REAL.num_layers
    assert plan.count_lora(real, ["q_proj"], 16).params == 16 * per_sublayer * 2 * REAL.num_layers  # alias
    experts = plan.count_lora(real, ["attention", "experts"], 16)
    assert experts.per_target["experts"] > 4e9 and experts.in_moe_leaf_per_layer > 0


def test_unknown_lora_target_is_a_config_error_naming_valid_sets(real):
    with pytest.raises(ConfigError, match="(?s)'audio_encoderz' matches no module.*Valid sets: attention"):
        plan.count_lora(real, ["audio_encoderz"], 8)


def test_two_b200_3tb_ram_2tb_disk_fits_and_why(real):
    cfg = config.load_config("conservative-2xb200")
    p = plan.plan(plan.inputs_from_config(cfg, real), machine(2, 179, 3000, 1863))  # a 2 TB disk: 1863 GiB
    assert p.fits and p.suggestions == []
    gpu, ram, disk = p.resource("GPU"), p.resource("CPU RAM"), p.resource("disk")
    # GPU: the MoE leaf gathered whole, twice over (coalesced all-gather), is most of it and fits 179 GiB
    assert 2 * LEAF_BYTES / GiB < gpu.need_gib < 179
    # RAM: one node holds the whole bf16 copy of the offloaded weights (> 1.12 TB) and fits 3000 GiB
    assert 1.12e12 / GiB < ram.need_gib < 3000
    # disk: the download (~1.12 TB) fits 2 TB
    assert 1.12e12 / GiB < disk.need_gib < 1863


def test_eight_h100_512gb_does_not_fit_and_no_pair_of_changes_makes_it(real):
    # The official token rules put ~8.6k positions in a 16-frame, 30 s sample (the pixel budget is split
    # over the frame pairs, so fewer frames do not shorten it): the coalesced 2x leaf gather, the eager
    # attention working set and the RAM all have to change at once, more than one pair of changes.
    cfg = config.load_config("standard-8xh100")
    p = plan.plan(plan.inputs_from_config(cfg, real), machine(8, 79.6, 512))
    assert not p.fits
    assert p.resource("CPU RAM").fits is False and p.resource("CPU RAM").need_gib > 1.12e12 / GiB > 512
    assert p.resource("GPU").fits is False and p.resource("GPU").need_gib > 2 * LEAF_BYTES / GiB
    assert p.resource("disk").fits is None  # no disk given: reported, not judged
    assert p.nothing_fits and p.suggestions == [] and "No single change" in p.table()


def test_eight_h200_512gb_does_not_fit_and_every_suggestion_replans_as_fitting(real):
    cfg = config.load_config("standard-8xh100")
    ins = plan.inputs_from_config(cfg, real)
    m = machine(8, 139.8, 512)
    p = plan.plan(ins, m)
    assert not p.fits and p.resource("CPU RAM").fits is False
    assert p.suggestions and not p.nothing_fits
    assert any("deepspeed.offload_param=nvme" in s.overrides for s in p.suggestions)
    assert any(o.startswith("hardware.nodes=") for s in p.suggestions for o in s.overrides)
    for s in p.suggestions:  # re-plan each from its changes, independently of the stored plan
        changes, nodes = {}, 1
        for o in s.overrides:
            key, value = o.split("=", 1)
            if key == "deepspeed.offload_param":
                changes["offload_param"] = value
            elif key == "deepspeed.allgather_sequential":
                changes["allgather_sequential"] = True
            elif key == "hardware.nodes":
                nodes = changes["nodes"] = int(value)
        again = plan.plan(dataclasses.replace(ins, **changes), m.model_copy(update={"nodes": nodes}), suggest=False)
        assert again.fits, s.change


def test_two_nodes_of_512gb_cannot_hold_the_weights(real):
    cfg = config.load_config("standard-8xh100")
    ins = dataclasses.replace(plan.inputs_from_config(cfg, real), nodes=2, allgather_sequential=True)
    p = plan.plan(ins, machine(8, 79.6, 512, nodes=2), suggest=False)
    assert p.resource("CPU RAM").need_gib > 1.12e12 / 2 / GiB > 512 and not p.fits


def test_nvme_param_buffers_must_hold_the_largest_parameter_partition(real):
    cfg = config.load_config("standard-8xh100", ["deepspeed.offload_param=nvme", "deepspeed.nvme_path=/nvme"])
    p = plan.plan(plan.inputs_from_config(cfg, real), machine(8, 79.6, 512, 4000), suggest=False)
    gate_up = REAL.n_routed_experts * 2 * REAL.expert_ffn_hidden_size * REAL.hidden_size
    buffers = next(i for i in p.resource("CPU RAM").items if "swap buffers" in i.component)
    assert buffers.gib == pytest.approx(8 * 5 * (gate_up / 8) * 2 / GiB)
    assert p.resource("disk").need_gib > 2 * 1.12e12 / GiB  # download + NVMe swap on the same disk


def test_nothing_fits_is_said_not_faked(real):
    cfg = config.load_config("conservative-2xb200")
    p = plan.plan(plan.inputs_from_config(cfg, real), machine(2, 16, 32, 100))
    assert not p.fits and p.nothing_fits and p.suggestions == []
    assert "No single change" in p.table()


def test_plan_command_json_verdict_and_exit_code(capsys):
    args = [
        "plan",
        "--profile",
        "standard-8xh100",
        "--gpus",
        "8",
        "--gpu-memory-gb",
        "79.6",
        "--ram-gb",
        "512",
        "--json",
    ]
    assert cli.main(args) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is False and out["resources"]["CPU RAM (per node)"]["fits"] is False
    assert all(s["fits"] for s in out["suggestions"])
    args = [
        "plan",
        "--profile",
        "conservative-2xb200",
        "--gpus",
        "2",
        "--gpu-memory-gb",
        "179",
        "--ram-gb",
        "3000",
        "--disk-gb",
        "1863",
    ]
    assert cli.main(args) == 0
    assert "**Verdict: FITS**" in capsys.readouterr().out


def test_plan_command_on_this_machine_for_cpu_demo(tiny_model_dir, capsys):
    assert cli.main(["plan", "--profile", "cpu-demo", "--json", f"model.source={tiny_model_dir}"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is True and out["machine"]["source"] == "probed"


def test_real_part_counts_and_codec_appear_in_the_json_plan(capsys):
    from transformers import LongcatFlashConfig as Flash

    from vss_core.model import audio, embeddings, vision

    args = [
        "plan",
        "--profile",
        "conservative-2xb200",
        "--gpus",
        "2",
        "--gpu-memory-gb",
        "179",
        "--ram-gb",
        "3000",
        "--disk-gb",
        "1863",
        "--json",
    ]
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    parts, h = out["facts"]["params_by_part"], Flash().hidden_size
    vis = vision.count_parameters(vision.VisionConfig(**vision.REAL_VISION_SIZES), h)
    aud = audio.count_parameters(audio.AudioConfig(), h)
    rows = embeddings.AUDIO_VOCAB_SIZE
    assert parts["vision_model"] == vis["vision_model"] and 636e6 < parts["vision_model"] < 637e6
    assert parts["vision_projector"] == vis["vision_projector"] and 113e6 < parts["vision_projector"] < 114e6
    assert parts["audio_encoder"] == aud["audio_encoder"] and 512e6 < parts["audio_encoder"] < 513e6
    assert parts["audio_projector"] == aud["audio_projector"] and 75e6 < parts["audio_projector"] < 76e6
    assert parts["audio_embedding"] == 4 * rows * h and parts["audio_output_layer"] == 7 * rows * h
    assert parts["text_embedding"] == Flash().vocab_size * h
    assert out["facts"]["total_params"] == sum(parts.values())
    codec = out["facts"]["codec_params"]
    assert 514e6 < codec["semantic_tokenizer"] < 515e6 and 21.9e6 < codec["acoustic_encoder"] < 22e6
    assert 162e6 < codec["decoder_16k"] < 163e6
    assert any("codec" in a and "no training rank" in a for a in out["assumptions"])


def test_prefetch_is_part_of_the_live_parameters_and_the_leaf_counts_toward_them(real):
    # DeepSpeed prefetches only while the gathered total is under stage3_max_live_parameters, the
    # leaf included, and overshoots it by at most what one prefetch asks for (a bucket): besides the
    # leaf, max_live - leaf more, plus one bucket; the coalesced gather's flat buffer holds the larger
    # of the leaf and a bucket a second time.
    ins = plan.inputs_from_config(config.load_config("conservative-2xb200"), real)
    bucket = 5e7 * 2  # DeepSpeed's default stage3_prefetch_bucket_size, bf16

    def gathered(**changes):
        items = plan._device_items(dataclasses.replace(ins, **changes), plan._derive(ins))
        parts = {i.component.split(" (")[0]: i.gib * GiB for i in items}
        return (
            parts["MoE leaf gathered whole"],
            parts["other gathered parameters"],
            parts.get("coalesced all-gather's flat buffer", 0.0),
        )

    leaf, others, flat = gathered(max_live_parameters=5e8)  # the profile's: 1 GB of bf16, far under the 36 GB leaf
    assert leaf == pytest.approx(LEAF_BYTES, rel=0.01) and flat == pytest.approx(LEAF_BYTES, rel=0.01)
    assert others == pytest.approx(bucket)  # the prefetch overshoot beyond the leaf
    leaf, others, flat = gathered(max_live_parameters=1e11)  # 200 GB live: the leaf's share is not counted twice
    assert others == pytest.approx(2 * 1e11 - LEAF_BYTES + bucket, rel=0.01)
    leaf, others, flat = gathered(max_live_parameters=5e8, prefetch_bucket_size=4e10)  # a bucket above the leaf
    assert flat == pytest.approx(2 * 4e10) and others == pytest.approx(2 * 4e10)
    _, _, flat = gathered(max_live_parameters=5e8, allgather_sequential=True)
    assert flat == 0.0  # parameter by parameter: no flat buffer of the whole gather


def test_prefetch_bucket_size_comes_from_the_config(real):
    cfg = config.load_config("conservative-2xb200", ["deepspeed.prefetch_bucket_size=2e7"])
    assert plan.inputs_from_config(cfg, real).prefetch_bucket_size == 2e7
    assert plan.inputs_from_config(config.load_config("cpu-demo"), real).prefetch_bucket_size == 5e7
