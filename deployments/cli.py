"""The `vss` command line.

    vss demo                                   tiny model + generated data + the flow on cpu-demo
    vss tiny-model DIR                         write a random-weight tiny checkpoint + codec (official layouts)
    vss demo-data DIR --samples N              write N real samples (H.264 mp4, 16 kHz wav)
    vss validate PATH [--json]                 check a dataset, sample by sample
    vss config --profile P [KEY=VALUE ...]     print the resolved config and DeepSpeed JSON
    vss plan --profile P [--gpus N ...] [--json] [KEY=VALUE ...]   will the run fit? (memory plan)
    vss run --profile P [KEY=VALUE ...]        run the `vss` flow
    vss serve                                  serve the Prefect deployments
    vss infer --adapter DIR --sample S --out W speak for one sample with base + LoRA adapter
    vss eval --adapter DIR --data D [--base]   score the adapter (and the base model) on a dataset (folder or manifest)

It lives beside the deployments (not in vss_core) because `run` and `serve` start Prefect, and
vss_core never imports prefect. Prefect is imported only by the commands that need it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from pydantic import BaseModel

from vss_core import config
from vss_core.errors import VSSError

DEMO_MODEL = Path(".vss/demo/tiny-model")
DEMO_CODEC = Path(".vss/demo/tiny-codec")
DEMO_DATA = Path(".vss/demo/data")
DEMO_SAMPLES = 8


def _fields_help(model: type[BaseModel] = config.VSSConfig, prefix: str = "") -> list[str]:
    lines = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines += _fields_help(ann, f"{prefix}{name}.")
        else:
            default = field.get_default(call_default_factory=True)
            lines.append(f"  {prefix}{name:<34} {field.description or ''} [default: {default}]")
    return lines


OVERRIDES_HELP = "Overrides are KEY=VALUE with dotted keys, values read as YAML. Every key:\n" + "\n".join(
    _fields_help()
)


def _load(args: argparse.Namespace) -> config.VSSConfig:
    return config.load_config(args.profile, args.overrides)


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from vss_core import codec, model

    path = model.write_tiny_checkpoint(Path(args.dir), seed=args.seed)
    print(f"Tiny LongCat-Flash-Omni checkpoint (official layout) written to {path}")
    codec_dir = Path(args.codec_dir) if args.codec_dir else path.with_name(path.name + "-codec")
    codec.write_tiny_codec(codec_dir, seed=args.seed)
    print(f"Tiny LongCat-Audio-Codec (official repo layout) written to {codec_dir}; set model.codec_source={codec_dir}")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from vss_core import demo

    paths = demo.write_demo_dataset(
        Path(args.dir), args.samples, seed=args.seed, seconds=args.seconds, overwrite=args.overwrite
    )
    print(f"{len(paths)} samples written to {args.dir}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from vss_core import data

    cfg = config.load_config(args.profile, [*args.overrides, f"data.root={args.path}"])
    report = data.validate_dataset(cfg.data)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(report.table())  # the table ends with the report's warnings
    try:
        data.select_samples(report, cfg.data.on_invalid)
    except VSSError as exc:
        # stderr in both modes: with --json, stdout stays one JSON document.
        print(f"\n{exc}", file=sys.stderr)
        return 1
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(json.dumps({"config": cfg.model_dump(mode="json"), "deepspeed": config.deepspeed_config(cfg)}, indent=2))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from vss_core import hardware, plan, steptime

    cfg = _load(args)
    try:
        assumed = steptime.parse_assume(args.assume)
        steptime.Speeds().with_overrides(assumed)
    except ValueError as exc:
        print(f"vss plan: {exc}", file=sys.stderr)
        return 2
    given = {k: getattr(args, k) for k in ("gpus", "gpu_memory_gb", "ram_gb", "disk_gb", "nvme_gb", "nodes")}
    if all(v is None for v in given.values()):
        report = hardware.probe(cfg.training.output_dir)
        machine = hardware.machine_from_report(report, cfg.hardware)
        where = (
            f"this machine ({len(report.gpus)} GPU(s), {report.ram_available_gb:.0f} GiB RAM available, "
            f"{report.disk_free_gb:.0f} GiB free at {report.disk_path})"
        )
    else:
        gpus = args.gpus if args.gpus is not None else cfg.hardware.gpus_per_node
        machine = plan.Machine(
            gpus_per_node=gpus,
            gpu_memory_gib=args.gpu_memory_gb,
            ram_gib=args.ram_gb,
            disk_gib=args.disk_gb,
            nvme_gib=args.nvme_gb,
            nodes=args.nodes or cfg.hardware.nodes,
            source="given",
        )
        if args.gpus is not None or args.nodes is not None:  # plan the run on the hardware given
            over = [f"hardware.gpus_per_node={gpus}", f"hardware.nodes={machine.nodes}"]
            if machine.nodes > 1 and not cfg.hardware.hostfile:
                over.append("hardware.hostfile=hostfile")
            cfg = config.load_config(args.profile, [*args.overrides, *over])
        where = "the hardware given (" + ", ".join(f"{k}={v}" for k, v in given.items() if v is not None) + ")"
    if args.gpu_model:
        machine = machine.model_copy(update={"gpu_name": args.gpu_model})
    result = hardware.plan_run(cfg, machine, speeds=assumed)
    if args.json:
        print(json.dumps({**plan.to_json(result), "profile": cfg.profile, "machine": machine.model_dump()}, indent=2))
    else:
        print(f"Plan for profile {cfg.profile!r} on {where}:\n")
        print(result.table())
    return 0 if result.fits else 1


def _ensure_demo_assets() -> None:
    from vss_core import codec, demo, model

    if not (DEMO_MODEL / "config.json").is_file() or not (DEMO_MODEL / "tokenizer.json").is_file():
        if DEMO_MODEL.exists():  # a tiny model of an older vss layout
            shutil.rmtree(DEMO_MODEL)
        print(f"Writing the tiny model to {DEMO_MODEL} ...")
        model.write_tiny_checkpoint(DEMO_MODEL)
    if not (DEMO_CODEC / codec.ENCODER_CKPT).is_file():
        print(f"Writing the tiny codec to {DEMO_CODEC} ...")
        codec.write_tiny_codec(DEMO_CODEC)
    if not DEMO_DATA.is_dir() or not any(DEMO_DATA.iterdir()):
        print(f"Writing {DEMO_SAMPLES} demo samples to {DEMO_DATA} ...")
        demo.write_demo_dataset(DEMO_DATA, DEMO_SAMPLES)


def _run_flow(profile: str, overrides: list[str]) -> int:
    from flows.vss import vss

    cfg = config.load_config(profile, overrides)  # fail fast, before Prefect starts
    result = vss(profile=profile, overrides=config.VSSOverrides.model_validate(config.nested_overrides(overrides)))
    print(f"\nvss run finished ({cfg.profile}): {result.run_dir}")
    width = max(len(s.stage) for s in result.stages)
    for s in result.stages:
        print(f"  {s.stage:<{width}}  {s.status:<8}  {s.detail}")
    report_file = Path(result.run_dir or ".") / "eval" / "report.json"
    if report_file.is_file():
        from vss_core import evaluate

        report = evaluate.EvalReport.model_validate_json(report_file.read_text())
        print(f"\nHeld-out evaluation (adapter vs base):\n{report.table(how=False)}")
        print(f"Plots: {', '.join(report.plots.values())}")
    print(f"\nAdapter: {result.adapter_dir}")
    if result.hub_url:
        print(f"Hub: {result.hub_url}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return _run_flow(args.profile, args.overrides)


def cmd_demo(args: argparse.Namespace) -> int:
    _ensure_demo_assets()
    return _run_flow("cpu-demo", args.overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from deployments.serve import ServeOptions, serve_deployments

    if not args.no_demo_assets:
        _ensure_demo_assets()
    serve_deployments(
        ServeOptions(
            watch_profile=args.watch_profile,
            watch_interval_s=args.watch_interval,
            debounce_s=args.debounce,
            backstop_cron=args.backstop_cron,
            crash_after_s=args.crash_after,
        )
    )
    return 0


def cmd_notify_data_updated(args: argparse.Namespace) -> int:
    from tasks.events import emit_data_updated

    root = str(
        Path(
            config.load_config(
                args.profile, [*args.overrides, *([f"data.root={args.root}"] if args.root else [])]
            ).data.root
        ).absolute()
    )
    event = emit_data_updated(root, args.profile)
    if event is None:
        print("error: the event was not sent: no Prefect API is configured (set PREFECT_API_URL)", file=sys.stderr)
        return 2
    print(
        f"Emitted vss.data.updated for {root}, profile {args.profile} (resource {event.resource.id}, "
        f"event {event.id}): the deployment of that profile re-runs"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vss_core import evaluate

    report = evaluate.evaluate_folder(
        Path(args.adapter),
        Path(args.data),
        out_dir=Path(args.out) if args.out else None,
        model_dir=Path(args.model) if args.model else None,
        codec_dir=Path(args.codec) if args.codec else None,
        with_base=args.base,
    )
    print(report.table())
    out = Path(report.plots["comparison"]).parent
    print(f"\nReport {out / evaluate.REPORT}; answers in {out / 'answers'}; plots: {', '.join(report.plots.values())}")
    if args.base:
        print(evaluate.gate(report, args.metric).message)
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from vss_core import infer

    report = infer.run_inference(
        Path(args.adapter),
        Path(args.sample),
        Path(args.out),
        model_dir=Path(args.model) if args.model else None,
        max_seconds=args.max_seconds,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        device=args.device,
        codec_dir=Path(args.codec) if args.codec else None,
    )
    end = "the model ended its answer" if report.stopped_at_eos else "cut at --max-seconds"
    print(
        f"{report.out}: {report.seconds:.2f} s at {report.sample_rate} Hz, {report.frames} frames in "
        f"{report.segments} segment(s) ({end})"
    )
    print(f"{report.text_out}: {report.text!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vss",
        description="Fine-tune LongCat-Flash-Omni for video-speech-to-speech with LoRA under DeepSpeed ZeRO-3, "
        "orchestrated by Prefect.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Profiles: {', '.join(config.list_profiles())}.  `vss run --help` lists every config key.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser, default: str | None = None) -> None:
        p.add_argument(
            "--profile",
            required=default is None,
            default=default,
            help=f"profile name ({', '.join(config.list_profiles())}) or a YAML path",
        )
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. training.epochs=1")

    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "demo", help="run the whole pipeline on the embedded default (CPU)", epilog=OVERRIDES_HELP, formatter_class=raw
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the cpu-demo profile")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "tiny-model",
        help="write a random-weight tiny LongCat-Flash-Omni checkpoint and LongCat-Audio-Codec in the official layouts",
    )
    p.add_argument("dir", help="checkpoint directory to write (must not exist or be empty)")
    p.add_argument("--codec-dir", help="codec directory to write (default: DIR-codec)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny_model)

    p = sub.add_parser("demo-data", help="write generated samples (in.mp4, in.wav, out.wav)")
    p.add_argument("dir")
    p.add_argument("--samples", type=int, default=DEMO_SAMPLES, help="number of samples (default 8)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each sample in seconds (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty directory")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("validate", help="validate a dataset and print the report; non-zero exit when it would fail")
    p.add_argument("path", help="a folder of sample folders, or a .jsonl manifest (README: Your data)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    with_config(p, default="cpu-demo")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "config",
        help="print the resolved config and generated DeepSpeed JSON",
        epilog=OVERRIDES_HELP,
        formatter_class=raw,
    )
    with_config(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser(
        "plan",
        help="plan memory per GPU, RAM, NVMe and disk: does the run fit? (exit 1 if not)",
        epilog="Without hardware flags it plans for this machine. Sizes in GiB (1024^3 bytes), "
        "as nvidia-smi, free -h and df -h report.\n\n" + OVERRIDES_HELP,
        formatter_class=raw,
    )
    with_config(p)
    p.add_argument("--gpus", type=int, help="GPUs per node (default: the profile's hardware.gpus_per_node)")
    p.add_argument("--gpu-memory-gb", type=float, help="memory of each GPU, GiB (an H100 80GB: 79.6; a B200: 179)")
    p.add_argument("--ram-gb", type=float, help="RAM per node, GiB")
    p.add_argument("--disk-gb", type=float, help="free disk for weights, prepared data and checkpoints, GiB")
    p.add_argument("--nvme-gb", type=float, help="NVMe space for offload, GiB (default: shares --disk-gb)")
    p.add_argument("--nodes", type=int, help="nodes (default: the profile's hardware.nodes)")
    p.add_argument(
        "--gpu-model",
        help="GPU model for the time estimate's datasheet rates: B200, H200, H100, A100 (default: the probed "
        "GPU's name, else H100)",
    )
    p.add_argument(
        "--assume",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a rate of the time estimate (repeatable): tflops, mfu, pcie_gbps, nvlink_gbps, net_gbps, "
        "link_efficiency, disk_gbps, adam_gparams; e.g. --assume mfu=0.3",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object whose top-level 'fits' is the verdict")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="run the vss flow", epilog=OVERRIDES_HELP, formatter_class=raw)
    with_config(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "serve",
        help="serve the Prefect deployments of prefect.yaml (vss/train-2xb200, "
        "vss/train-8xh100, vss/demo-cpu, vss-watch-data/watch-data) and create its automation",
        epilog="prefect.yaml gives every default below; these flags change them for this process. "
        "Flow runs send a heartbeat every minute; the automation vss-crash-silent-runs marks a run "
        "Crashed when its heartbeats stop without an end state.",
    )
    p.add_argument(
        "--no-demo-assets", action="store_true", help="do not write the tiny model and demo data that vss/demo-cpu uses"
    )
    p.add_argument(
        "--watch-profile",
        default=None,
        metavar="PROFILE",
        help="the profile whose dataset vss-watch-data/watch-data watches: set it to this machine's "
        "(conservative-2xb200 on a 2x B200 box); its events start that profile's deployment only "
        "(prefect.yaml: cpu-demo)",
    )
    p.add_argument(
        "--watch-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how often vss-watch-data/watch-data fingerprints the dataset (prefect.yaml: 300)",
    )
    p.add_argument(
        "--debounce",
        type=float,
        default=None,
        metavar="SECONDS",
        help="data updates within this window start one training run, after the window (prefect.yaml: 300)",
    )
    p.add_argument(
        "--backstop-cron",
        default=None,
        metavar="CRON",
        help="also run the train deployments on this cron schedule, e.g. '0 3 * * *' (default: none)",
    )
    p.add_argument(
        "--crash-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="mark a run Crashed when this long passes after a heartbeat with no other heartbeat "
        "or end state (prefect.yaml: 300)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "notify-data-updated",
        help="emit vss.data.updated so the train deployment of --profile re-runs (for your own data jobs)",
    )
    p.add_argument("--root", default=None, help="dataset root (default: the profile's data.root)")
    with_config(p, default="cpu-demo")
    p.set_defaults(func=cmd_notify_data_updated)

    p = sub.add_parser(
        "eval",
        help="score an adapter on a dataset folder: eval loss per stream, EOS before the "
        "cap, text WER, mel-cepstral distance (and the base model with --base)",
        epilog="Each valid sample of --data is prepared with the run's data settings and scored; "
        "the report, the generated answers and the plots are written to --out.",
    )
    p.add_argument("--adapter", required=True, help="adapter folder (RUN/adapter)")
    p.add_argument(
        "--data",
        required=True,
        help="dataset folder in the training layout (<sample>/in.mp4, in.wav, "
        "out.wav, optional out.txt); samples it was not trained on",
    )
    p.add_argument("--base", action="store_true", help="also score the base model (the adapter disabled) and compare")
    p.add_argument(
        "--metric",
        default="loss",
        choices=["loss", "text_wer", "mcd", "asr_wer"],
        help="the metric the comparison line judges by (default loss)",
    )
    p.add_argument("--out", help="where to write report.json, answers/ and the plots (default: RUN/eval-<data name>)")
    p.add_argument("--model", help="base checkpoint directory (default: the run's model.source)")
    p.add_argument("--codec", help="LongCat-Audio-Codec directory (default: the run's model.codec_source)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("infer", help="generate speech for one sample with the base model + a trained LoRA adapter")
    p.add_argument(
        "--adapter", required=True, help="adapter folder (RUN/adapter: adapter_config.json, adapter_model.safetensors)"
    )
    p.add_argument("--sample", required=True, help="sample folder holding in.mp4 and in.wav, e.g. data/train/01")
    p.add_argument("--out", required=True, help="WAV to write (mono, the codec's rate: 16 kHz)")
    p.add_argument(
        "--model",
        help="base checkpoint directory; default: model.source in the run's config.json (the folder above --adapter)",
    )
    p.add_argument(
        "--codec",
        help="LongCat-Audio-Codec directory holding the decoder weights; default: "
        "model.codec_source in the run's config.json",
    )
    p.add_argument(
        "--max-seconds", type=float, help="longest speech to generate; default: the run's data.audio_seconds"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="text sampling: 0 = greedy (default, as the "
        "official demo); > 0 samples. Speech ids are always argmax with the official repetition penalty",
    )
    p.add_argument(
        "--top-k", type=int, default=1, help="text sampling among the k likeliest tokens (1 = greedy, 0 = all)"
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.set_defaults(func=cmd_infer)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # vss's own messages at INFO; libraries (httpx, ...) only when they warn. Prefect configures its own loggers.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vss_core").setLevel(logging.INFO)
    try:
        return args.func(args)
    except VSSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
