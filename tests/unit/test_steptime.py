"""The time estimate of `vss plan`: each component against its formula written out here, the rates
a GPU model gets, overrides, and the command line."""

import dataclasses
import json
import math

import pytest

from deployments import cli
from vss_core import config, plan, steptime


def _estimate(**changes):
    args = dict(
        speeds=steptime.Speeds(tflops=1000.0, mfu=0.5, pcie_gbps=50.0, nvlink_gbps=400.0, link_efficiency=1.0),
        cuda=True,
        world=2,
        ranks_per_node=2,
        nodes=1,
        weight_bytes=100e9,
        trainable=10_000_000,
        dtype_bytes=2,
        active_llm_params=1e9,
        encoder_flops_per_sample=0.0,
        tokens_per_sample=1000,
        micro_batch_size=1,
        gradient_accumulation_steps=4,
        activation_checkpointing=True,
        offload_param="cpu",
        offload_optimizer="cpu",
        zero_stage=3,
        checkpoint_bytes=1e9,
        save_every_n_steps=10,
        num_samples=20,
        epochs=2,
        max_steps=None,
    )
    return steptime.estimate(**(args | changes))


def _seconds(est, start):
    return next(i.seconds for i in est.items if i.component.startswith(start))


def test_each_component_is_its_formula():
    est = _estimate()
    # 3 passes (forward, recompute, backward) x 2 FLOPs x 1e9 params x 1000 tokens at 1000 TFLOPS x 0.5
    assert _seconds(est, "compute") == pytest.approx(6e12 / 5e14)
    # each pass: this rank's half of 100 GB over a 50 GB/s PCIe link
    assert _seconds(est, "parameters host -> device") == pytest.approx(3 * 50e9 / 50e9)
    # each pass: the other half arrives over NVLink at 400 GB/s
    assert _seconds(est, "parameter all-gathers") == pytest.approx(3 * 50e9 / 400e9)
    grads = 10e6 * 2 * 0.5 / 400e9 + 10e6 * 4 / 2 / 50e9
    assert _seconds(est, "LoRA gradients") == pytest.approx(grads)
    micro = 6e12 / 5e14 + 3.0 + 3 * 50e9 / 400e9 + grads
    assert est.micro_batch_s == pytest.approx(micro)
    per_step = 5e6 / 1e9 + 10e6 * 2 / 2 / 50e9 + 1e9 / 2e9 / 10  # Adam, copy back, a tenth of a checkpoint
    assert est.step_s == pytest.approx(4 * micro + per_step)
    assert est.step_overlap_s == pytest.approx(4 * (micro - 6e12 / 5e14) + per_step)  # traffic exceeds compute
    # 20 samples over 2 ranks: 10 micro batches a rank, 3 optimizer steps (4 + 4 + 2)
    assert est.steps_per_epoch == 3
    assert est.epoch_s == pytest.approx(10 * micro + 3 * per_step)
    assert est.run_s == pytest.approx(2 * est.epoch_s)
    assert _estimate(max_steps=1).run_s == pytest.approx(est.epoch_s / 3)


def test_what_the_settings_change():
    base = _estimate()
    # no activation checkpointing: no recompute pass
    assert _seconds(_estimate(activation_checkpointing=False), "compute") == pytest.approx(
        _seconds(base, "compute") * 2 / 3
    )
    # parameters on the GPU: nothing crosses PCIe
    assert not any(i.component.startswith("parameters host") for i in _estimate(offload_param="none").items)
    # two nodes of 2 ranks at 50 GB/s per node: 25 GB/s into each rank, slower than NVLink
    two = _estimate(world=4, nodes=2)
    assert _seconds(two, "parameter all-gathers") == pytest.approx(3 * 100e9 * 3 / 4 / 25e9)
    assert _estimate(num_samples=0).epoch_s is None


def test_gpu_models_get_their_datasheet_rates_and_overrides_are_checked():
    b200 = steptime.Speeds.for_device("cuda", "NVIDIA B200")
    assert (b200.tflops, b200.nvlink_gbps) == (2250.0, 900.0) and b200.source == "B200 datasheet"
    unknown = steptime.Speeds.for_device("cuda", "Some GPU")
    assert unknown.tflops == steptime.GPUS["H100"][0] and "Some GPU" in unknown.source
    given = b200.with_overrides({"mfu": 0.4})
    assert given.mfu == 0.4 and "given mfu=0.4" in given.source
    with pytest.raises(ValueError, match="unknown --assume name"):
        b200.with_overrides({"speed": 1.0})
    with pytest.raises(ValueError, match="positive"):
        b200.with_overrides({"mfu": 0.0})
    with pytest.raises(ValueError, match="name=value"):
        steptime.parse_assume(["mfu"])
    assert steptime.parse_assume(["mfu=0.3", "disk_gbps=5"]) == {"mfu": 0.3, "disk_gbps": 5.0}


def test_the_plan_counts_the_active_parameters_of_the_real_model():
    cfg = config.load_config("conservative-2xb200")
    ins = plan.inputs_from_config(cfg, plan.real_model_shape(), num_samples=8)
    p = plan.plan(ins, plan.Machine(gpus_per_node=2, gpu_memory_gib=179, ram_gib=3000, disk_gib=3000))
    s = ins.shape
    expert = 3 * s.hidden_size * s.expert_ffn_hidden_size
    counts = plan.count_params(s)
    active = (
        counts.llm
        - s.vocab_size * s.hidden_size
        - s.num_layers * (s.n_routed_experts - s.moe_topk) * expert
        + counts.parts["audio_output_layer"]
    )
    assert 25e9 < active < 35e9  # ~27B active in the official description, plus the top-k upper bound
    tokens = p.facts["tokens_per_sample"]
    compute = _seconds(p.time, "compute")
    encoders = compute * steptime.GPUS["H100"][0] * 1e12 * 0.2 - 6 * active * tokens  # no GPU named: H100
    assert 0 < encoders < 0.1 * 6 * active * tokens  # the frozen encoders' forward is a small part
    assert p.time.steps_per_epoch == math.ceil(math.ceil(8 / 2) / cfg.training.gradient_accumulation_steps)
    # twice the utilisation halves the compute
    faster = plan.plan(
        dataclasses.replace(ins, speeds={"mfu": 0.4}),
        plan.Machine(gpus_per_node=2, gpu_memory_gib=179, ram_gib=3000, disk_gib=3000),
    )
    assert _seconds(faster.time, "compute") == pytest.approx(compute / 2)


def test_vss_plan_shows_the_time_and_takes_assumptions(tiny_model_dir, capsys):
    base = ["plan", "--profile", "conservative-2xb200", "--gpus", "2", "--gpu-memory-gb", "179", "--ram-gb", "3000"]
    assert cli.main([*base, "--gpu-model", "B200"]) == 0
    out = capsys.readouterr().out
    assert "Time per optimizer step:" in out and "rates: B200 datasheet" in out
    assert cli.main([*base, "--json", "--assume", "mfu=0.4"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["time"]["step_s"] > 0 and "given mfu=0.4" in " ".join(data["time"]["assumptions"])
    assert cli.main([*base, "--assume", "bogus=1"]) == 2
    assert "unknown --assume name" in capsys.readouterr().err
