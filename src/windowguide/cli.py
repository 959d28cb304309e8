"""windowguide: sliding-window guidance (SWG, M-SWG), weak-to-strong guidance (CFG, autoguidance, SGG) and
window fusion for large images, on the bundled models, your checkpoints and local diffusers pipelines.
Start with 'windowguide demo'; 'windowguide COMMAND --help' explains each command."""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys

from .errors import RunError, WindowguideError


def _toy(args) -> int:
    from .toy import EXPERIMENTS
    exp = EXPERIMENTS[args.name]
    out = args.out or os.path.join("runs", "toy", args.name)
    report = exp.run(out_dir=out, json_path=args.json)
    print(exp.summary(report))
    for path in report.get("figures", []):
        print(f"figure: {path}")
    if args.json:
        print(f"report: {args.json}")
    return 0


def _upscale(args) -> int:
    from .commands import upscale
    upscale.run(args.image, args.model, args.scale, args.strength, args.prompt, args.negative_prompt, args.guidance,
                args.seeds, args.steps, args.mode, args.stride, args.sampler, args.vcf, args.filter, args.progressive,
                args.out, args.device or "cpu", args.dtype, args.klass, args.max_batch, view_batch=args.view_batch,
                max_memory=args.max_memory)
    _said_once(f"upscaled: {args.out}/ (upscaled_SEED.png, settings.json)")
    return 0


def _bench(args) -> int:
    if args.what == "speed":
        from .bench import speed
        report = speed.run(args.json, quick=args.quick, device=args.device)
        print(speed.format_report(report))
    elif args.what == "panorama":
        from .bench import panorama
        report = panorama.run(args.json, quick=args.quick, out_dir=args.out or "runs/bench/panorama",
                              device=args.device or "cpu")
        print(panorama.format_report(report))
    elif args.what == "video":
        from .bench import video
        report = video.run(args.json, quick=args.quick, out_dir=args.out or "runs/bench/video")
        print(video.format_report(report))
    elif args.what == "upscale":
        from .bench import upscale
        report = upscale.run(args.json, quick=args.quick, out_dir=args.out or "runs/bench/upscale")
        print(upscale.format_report(report))
    elif args.what == "w2s":
        from .bench import w2s
        given = dict(train_steps=args.train_steps, datasets=tuple(args.datasets.split(",")) if args.datasets else None)
        settings = w2s.W2SSettings(**{k: v for k, v in given.items() if v})
        report = w2s.run(args.json, out_dir=args.out or "runs/bench/quality", settings=settings)
        print(w2s.format_report(report))
    elif args.what == "fronts":
        from .bench import fronts
        settings = None
        if args.datasets:
            base = fronts.QUICK_FRONTS if args.quick else fronts.FrontSettings()
            settings = fronts.FrontSettings(**{**base.__dict__, "datasets": tuple(args.datasets.split(","))})
        report = fronts.run(args.json, quick=args.quick, out_dir=args.out or "runs/bench/fronts", settings=settings)
        print(fronts.format_report(report))
    elif args.what == "positions":
        from .bench import positions
        report = positions.run(args.json, quick=args.quick)
        print(positions.format_report(report))
    elif args.what == "generate":
        from .bench import generate
        report = generate.run(args.json, quick=args.quick)
        print(generate.format_report(report))
    elif args.what == "demo":
        from .bench import demo
        report = demo.run(args.json, repeats=3 if not args.quick else 1)
        print(demo.format_report(report))
    elif args.what == "scale":
        from .bench import scale
        report = scale.run(args.json, quick=args.quick, sdxl_step_seconds=args.sdxl_step_seconds)
        print(scale.format_report(report))
    elif args.what == "quality":
        from .bench import quality
        report = quality.run(args.json, quick=args.quick, out_dir=args.out or "runs/bench/quality")
        print(quality.format_report(report))
    if args.json:
        print(f"report: {args.json}")
    return 0


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: accepted: an integer >= 1")
    return v


def _finite(low: float = 0.0):
    """argparse type: a finite float >= low."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not math.isfinite(v) or v < low:
            raise argparse.ArgumentTypeError(f"{text!r}: accepted: a finite number >= {low:g}")
        return v
    return parse


def _mults(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mults {text!r}: expected integers such as 1,2,2") from None


def _train(args) -> int:
    from .commands import train
    settings = dict(steps=args.steps, batch=args.batch, lr=args.lr, base=args.base, mults=args.mults,
                    weight_decay=args.weight_decay, label_dropout=args.label_dropout, seed=args.seed,
                    checkpoint_every=args.checkpoint_every, w2s=args.w2s, w2s_weight=args.w2s_weight,
                    w2s_split=args.w2s_split, w2s_low=args.w2s_low, w2s_weak=args.w2s_weak)
    if args.unconditional:
        settings["conditional"] = False
    if args.classifier:
        settings = dict(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    path = train.run(args.dataset, args.out, args.preset, args.classifier, progress=True, **settings)
    print(f"model: {path}")
    return 0


def _sample(args) -> int:
    from .commands import sample
    from .commands.sample_pipeline import is_pipeline_dir
    from .distributed import ranks
    if is_pipeline_dir(args.model):
        from .commands import sample_pipeline
        if args.weak or args.vae:
            raise WindowguideError("--weak and --vae are for windowguide/EDM2 checkpoints, not pipeline folders")
        guidance, steps, sampler = args.guidance or "none", args.steps, args.sampler
        positions, embed = args.crop_positions, args.guidance_embed
        if args.preset:
            from .presets import expand
            if args.guidance is not None:
                raise WindowguideError("give --guidance or --preset, not both")
            p = expand(args.preset)
            guidance, steps, sampler = p.guidance, steps or p.steps, sampler or p.sampler
            positions = positions or p.crop_positions
        sample_pipeline.run(args.model, guidance, args.seeds, args.out, args.prompt, args.negative_prompt,
                            args.klass, steps, sampler, 4 if args.batch_size is None else args.batch_size,
                            args.device or "cpu", args.dtype, args.height, args.width, True, positions or "slice",
                            embed)
        if ranks().main:
            print(f"samples: {args.out}/ (PNG per seed, grid.png, samples.npz, manifest.json, settings.json)")
        return 0
    if args.prompt is not None or args.height or args.width:
        raise WindowguideError("--prompt, --height and --width need a diffusers pipeline folder as --model")
    given = lambda v, default: default if v is None else v
    guidance, steps, sampler = given(args.guidance, "none"), given(args.steps, 32), given(args.sampler, "heun")
    if args.preset:
        from .presets import expand
        if args.guidance is not None:
            raise WindowguideError("give --guidance or --preset, not both")
        p = expand(args.preset, args.weak)
        guidance, steps, sampler = p.guidance, given(args.steps, p.steps), given(args.sampler, p.sampler)
        if ranks().main:
            print(f"preset {args.preset}: --guidance '{guidance}', {sampler} {steps} steps ({p.source}; {p.weights})")
    elif args.weak:
        raise WindowguideError("--weak goes with a --preset that uses a weak model; in a SPEC write ag:w=W,model=FILE")
    sample.run(args.model, guidance, args.seeds, args.out, args.klass, steps, sampler,
               64 if args.batch_size is None else args.batch_size, args.device or "cpu", vae=args.vae,
               preset=args.preset)
    if ranks().main:
        print(f"samples: {args.out}/ (PNG per seed, grid.png, samples.npz, manifest.json, settings.json)")
    return 0


def _said_once(text: str) -> None:
    """Print a command's closing line once: on rank 0 under torchrun."""
    from .distributed import ranks
    if ranks().main:
        print(text)


def _panorama(args) -> int:
    from .commands import panorama
    from .commands.sample_pipeline import is_pipeline_dir
    options = {k: v for k, v in (("eta", args.eta), ("churn", args.churn)) if v is not None}
    if args.view_batch is not None and not is_pipeline_dir(args.model):
        options["view_batch"] = args.view_batch
    if args.max_memory is not None and not is_pipeline_dir(args.model):
        options["max_memory"] = args.max_memory
    regions = _regions(args, text_key="prompt" if is_pipeline_dir(args.model) else "class")
    if is_pipeline_dir(args.model):
        from .commands import panorama_pipeline
        settings = dict(width=args.width, height=args.height, stride=args.stride, mode=args.mode, vcf=args.vcf,
                        sampler=args.sampler, steps=args.steps, guidance=args.guidance)
        if args.preset:
            from .presets import expand
            p = expand(args.preset)
            if not p.panorama:
                raise WindowguideError(f"--preset {args.preset} is not a panorama preset")
            settings.update(p.panorama, sampler=args.sampler or p.sampler, guidance=p.guidance,
                            steps=p.steps if args.steps is None else args.steps)
        panorama_pipeline.run(args.model, args.prompt, args.negative_prompt, settings["width"], settings["height"],
                              settings["stride"], settings["mode"], args.fuse, settings["sampler"], settings["steps"],
                              settings["vcf"], args.style_alpha, args.circular, settings["guidance"], args.klass,
                              args.seeds, args.out, args.max_batch, args.device or "cpu", args.dtype, args.batch_size,
                              True, regions, **options)
        _said_once(f"panoramas: {args.out}/ (panorama_SEED.png, panoramas.png, manifest.json, settings.json)")
        return 0
    if args.prompt is not None or args.preset:
        raise WindowguideError("--prompt and --preset need a diffusers pipeline folder as --model")
    panorama.run(args.model, args.width, args.height, args.stride, args.mode, args.fuse, args.sampler or "ddim",
                 32 if args.steps is None else args.steps,
                 args.vcf, args.style_alpha, args.circular, args.guidance or "none", args.klass, args.seeds, args.out,
                 args.max_batch, args.device or "cpu", True, args.batch_size, regions, **options)
    _said_once(f"panoramas: {args.out}/ (panorama_SEED.png, panoramas.png, manifest.json, settings.json)")
    return 0


def _regions(args, text_key: str) -> list[dict] | None:
    """--regions FILE's entries, then each --region 'WHAT@top,left,bottom,right' (WHAT: a prompt, or a class
    on class models)."""
    from .regional import parse_region, read_regions
    entries = read_regions(args.regions) if args.regions else []
    for text in args.region or []:
        e = parse_region(text)
        entries.append({text_key: e["prompt"], "box": e["box"]})
    return entries or None


def _video(args) -> int:
    from .commands import video
    video.run(args.model, args.prompt, args.negative_prompt, args.frames, args.height, args.width, args.guidance,
              args.window_frames, args.stride_frames, args.mode, args.sampler, args.steps, args.vcf, args.style_alpha,
              args.circular, args.seeds, args.out, args.fps, args.device or "cpu", args.dtype)
    _said_once(f"videos: {args.out}/ (video_SEED.mp4, video_SEED/frame_NNNN.png, settings.json)")
    return 0


def _ui(args) -> int:
    try:
        from .ui.app import bundled_models, launch
    except ImportError as e:
        raise WindowguideError(f"windowguide ui needs Gradio: pip install 'windowguide[ui]' ({e})") from None
    models = bundled_models() + list(args.model or [])
    print(f"windowguide ui: http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    launch(args.host, args.port, args.share, models)
    return 0


def _metrics(args) -> int:
    from .commands import metrics
    result = metrics.run(args.images, args.ref, args.metrics, args.out, args.make_ref, args.features, args.inception,
                         args.dinov2, args.batch_size, args.device or "cpu", args.json, protocol=args.protocol)
    from .distributed import ranks
    if ranks().main:
        print(f"reference: {result['reference']} ({result['images']} images)" if args.make_ref
              else metrics.format_result(result))
    return 0


def _convert(args) -> int:
    from .commands import convert
    record = convert.run(args.src, args.out, args.key, args.heads)
    print(f"{args.out}: {record['kind']}, shape {record['shape']}, encoder {record['encoder']['kind']}")
    return 0


def _tiny(args) -> int:
    from .tiny import save
    save(args.kind, args.folder)
    print(f"a tiny {args.kind} pipeline with random weights: {args.folder} (use it as --model {args.folder}; its "
          f"images are noise-like)")
    return 0


def _presets(args) -> int:
    from .presets import describe
    print(describe())
    return 0


def _demo(args) -> int:
    from .commands import demo
    demo.run(args.out, args.model, threads=args.threads_used)
    return 0


_DEVICE = "cpu (default), cuda, cuda:N or mps"
TOYS = ("leaves", "tree", "triangle")          # windowguide.toy.EXPERIMENTS, named here to keep --help fast


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every subcommand (nothing heavy is imported: --help answers at once)."""
    p = argparse.ArgumentParser(prog="windowguide", description=__doc__)
    p.set_defaults(resumable=False)
    p.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of a failure")
    common.add_argument("--threads", type=_positive_int, default=None,
                        help="CPU threads (default: the cores idle when it starts, so a busy machine does not slow "
                             "it 2-5x; under torchrun shared among the processes)")
    sub = p.add_subparsers(dest="command", required=True)

    toy = sub.add_parser("toy", parents=[common], help="2-D experiments with exact ground truth")
    toy.add_argument("name", choices=TOYS,
                     help="leaves: the SGG paper's regimes on recursive 2-D mixtures; tree: autoguidance with a "
                          "weaker and a weight-decayed model, and SGG; triangle: the M-SWG paper's analytic toy")
    toy.add_argument("--json", help="write the report here")
    toy.add_argument("--out", help="folder for figures (default runs/toy/NAME)")
    toy.set_defaults(func=_toy)

    bench = sub.add_parser("bench", parents=[common], help="benchmarks that print figures")
    bench.add_argument("what", choices=["speed", "quality", "fronts", "panorama", "upscale", "video", "w2s", "generate",
                                        "positions", "demo", "scale"],
                       help="speed: what each guidance costs against its FLOP floor and diffusers; quality: every "
                            "guidance method over weights on the bundled models (FD, KID, IS, P/R, coherence); fronts: "
                            "fine sweeps over seed sets, Pareto fronts of quality against side effects, gains per "
                            "sigma band, banded M-SWG and a w(sigma) schedule; "
                            "panorama: fusion methods on wide scenes, and speed against diffusers; upscale: 2x / 4x "
                            "window-fusion upscaling of held-out scenes against the real images; video: temporal M-SWG and "
                            "fusion along time on the bundled bounce model, exact motion metrics; w2s: guidance "
                            "learned in training vs CFG; generate: the sample command's overhead and 1 vs 2 "
                            "processes; positions: crop positional embeddings on a tiny DiT; demo: 'windowguide "
                            "demo' timed as a fresh process, alone and beside a busy core; scale: the fused loop's memory against "
                            "the windows and the canvas, all windows at once and in view batches, one canvas on 2 "
                            "processes against 1, and SDXL upscale estimates")
    bench.add_argument("--json", help="write the report here")
    bench.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    bench.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    bench.add_argument("--out", help="folder for plots and grids")
    bench.add_argument("--sdxl-step-seconds", type=float, help="scale: one SDXL UNet evaluation of a 128 x 128 latent "
                       "on your GPU, in seconds, for the time of the SDXL upscale estimates")
    bench.add_argument("--train-steps", type=int, help="w2s: training steps of every model (default 400)")
    bench.add_argument("--datasets", help="w2s, fronts: comma-separated, default digits,mirror")
    bench.set_defaults(func=_bench)

    demo = sub.add_parser("demo", parents=[common],
                          help="none, M-SWG, CFG and CFG + M-SWG on the bundled model, as one PNG (61 s on 2 cores alone, "
                               "101 s beside a busy core, measured 2026-12-07)")
    demo.add_argument("--out", default=".", help="folder for windowguide_demo.png (default: here)")
    demo.add_argument("--model", default="mirror", help="bundled name or checkpoint (default: mirror)")
    demo.set_defaults(func=_demo)

    smp = sub.add_parser("sample", parents=[common], help="sample a model with a guidance SPEC (see the README)")
    smp.add_argument("--model", required=True,
                     help="bundled name (digits, mirror, scenes, or their -weak/-wd variants), a .safetensors "
                          "file, or a local diffusers pipeline folder")
    smp.add_argument("--guidance", help="e.g. 'cfg:w=1+mswg:w=0.5,window=16' (default none)")
    smp.add_argument("--preset", help="a paper's setting by name (see windowguide.presets): e.g. edm2-s-mswg-fid")
    smp.add_argument("--weak", help="the weak model of an autoguidance preset (a .safetensors)")
    smp.add_argument("--vae", help="latent models: local diffusers AutoencoderKL folder (or $WINDOWGUIDE_VAE)")
    smp.add_argument("--prompt", help="pipeline folders (SD, SDXL, SD3, FLUX, Qwen-Image, ...): the prompt")
    smp.add_argument("--negative-prompt", default="", help="pipeline folders: CFG's negative prompt (default empty)")
    smp.add_argument("--height", type=int, help="pipeline folders: image height in pixels (default the model's)")
    smp.add_argument("--width", type=int, help="pipeline folders: image width in pixels")
    smp.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                     help="pipeline folders: weights and activations")
    smp.add_argument("--guidance-embed", type=_finite(), help="pipeline folders of guidance-distilled models "
                     "(FLUX.1-dev, FLUX.2 [dev]): the guidance input (default: the family's, 3.5 / 4.0)")
    smp.add_argument("--crop-positions", choices=["slice", "stretch"],
                     help="pipeline folders (DiT, FLUX): a crop's positions: its true location (slice, the default) "
                          "or its own grid (stretch, the M-SWG authors' way; the DiT presets' choice)")
    smp.add_argument("--seeds", default="0-63", help="one sample per seed, e.g. 0-63 or 1,5,7-9 (default 0-63)")
    smp.add_argument("--class", dest="klass", default=None,
                     help="class index, 'all' (seed mod K, the default) or 'none' (unconditional)")
    smp.add_argument("--out", default="runs/sample",
                     help="folder for the PNGs, grid, npz and manifest; a re-run resumes it (default runs/sample)")
    smp.add_argument("--steps", type=int, help="default 32 (or the preset's)")
    smp.add_argument("--sampler", help="default heun (or the preset's)")
    smp.add_argument("--batch-size", type=int, help="seeds drawn together (default 64; pipeline folders 4)")
    smp.add_argument("--device", help=_DEVICE)
    smp.set_defaults(func=_sample, resumable=True)

    pano = sub.add_parser("panorama", parents=[common], help="a canvas larger than the model, from fused windows")
    pano.add_argument("--model", default="scenes", help="bundled name, checkpoint, or diffusers pipeline folder")
    pano.add_argument("--prompt", help="pipeline folders: the prompt")
    pano.add_argument("--negative-prompt", default="", help="pipeline folders: CFG's negative prompt")
    pano.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                      help="pipeline folders: weights and activations")
    pano.add_argument("--preset", help="pipeline folders: a panorama preset, e.g. gvcf-sd2-panorama")
    pano.add_argument("--regions", help="regional prompts: a JSON file {\"regions\": [{\"prompt\" | \"class\": ..., "
                      "\"box\": [top, left, bottom, right] | \"mask\": PNG, \"weight\": 1}]} (image pixels); --prompt / "
                      "--class is the background over the whole canvas")
    pano.add_argument("--region", action="append", help="one region, 'PROMPT@top,left,bottom,right' (pixels; class "
                      "models: 'CLASS@...'); repeatable")
    pano.add_argument("--width", type=int, default=96, help="canvas width in pixels")
    pano.add_argument("--height", type=int, help="canvas height (default: the model's)")
    pano.add_argument("--stride", type=int, default=8, help="step between windows")
    pano.add_argument("--mode", default="multidiffusion", choices=["multidiffusion", "gf", "gaussian"],
                      help="multidiffusion: uniform average of window states; gf: Guided Fusion's cone weights; "
                           "gaussian: Mixture of Diffusers' gaussian weights on predictions")
    pano.add_argument("--fuse", choices=["state", "prediction"], help="override the mode's fused quantity")
    pano.add_argument("--sampler", help="ddim (default; flow pipelines: flow_euler), ddpm, euler, heun")
    pano.add_argument("--steps", type=int, help="default 32 (pipeline folders 50, flow pipelines 28, or the preset's)")
    pano.add_argument("--eta", type=_finite(), help="DDIM eta (stochastic if > 0)")
    pano.add_argument("--churn", type=_finite(), help="EDM churn for euler/heun")
    pano.add_argument("--vcf", action="store_true", help="variance-corrected fusion (stochastic samplers)")
    pano.add_argument("--style-alpha", type=_finite(), default=0.0, help="style alignment strength, 0 = off")
    pano.add_argument("--circular", action="store_true", help="wrap around the width (360 degrees)")
    pano.add_argument("--guidance", help="SPEC applied inside every window (default: none; pipeline folders with a "
                                         "prompt: cfg:w=6.5, diffusers' scale 7.5; flow pipelines: their own "
                                         "default scale); 'none' is no guidance")
    pano.add_argument("--class", dest="klass", default=None, help="class index, 'all' or 'none'")
    pano.add_argument("--seeds", default="0-3", help="one panorama per seed, e.g. 0-3 or 1,5 (default 0-3)")
    pano.add_argument("--out", default="runs/panorama",
                      help="folder for the panoramas and manifest; a re-run resumes it (default runs/panorama)")
    pano.add_argument("--max-batch", type=int, help="window-sized inputs per network call (memory cap)")
    pano.add_argument("--batch-size", type=int, default=4, help="panoramas drawn together (default 4)")
    pano.add_argument("--view-batch", type=int, help="bundled / EDM models: windows stepped and folded at a time, so a "
                      "step holds one view batch's states instead of every window's (default: all at once)")
    pano.add_argument("--max-memory", type=float, help="bundled / EDM models: GiB the canvas and the window states may "
                      "take; the view batch is chosen to fit, a canvas that cannot is refused (default: all windows "
                      "at once; on a GPU, its free memory)")
    pano.add_argument("--device", help=_DEVICE)
    pano.set_defaults(func=_panorama, resumable=True)

    vid = sub.add_parser("video", parents=[common], help="a video per seed (MP4 and frames); long videos by "
                         "fusing clip-length windows along time")
    vid.add_argument("--model", required=True, help="a Wan pipeline folder, or a bundled / saved video model (bounce)")
    vid.add_argument("--prompt", help="Wan: the prompt")
    vid.add_argument("--negative-prompt", default="", help="Wan: CFG's negative prompt")
    vid.add_argument("--frames", type=int, help="frames (Wan: 4k + 1, default 81; bounce: default its clip, 12)")
    vid.add_argument("--height", type=int, help="Wan: pixels (default 480)")
    vid.add_argument("--width", type=int, help="Wan: pixels (default 832)")
    vid.add_argument("--guidance", help="SPEC in every window, e.g. 'cfg:w=4+mswg:w=0.5,window=11x60x104' "
                     "(TxHxW: crops in time and space; default cfg:w=4 for Wan, none otherwise)")
    vid.add_argument("--window-frames", type=int, help="frames of a fused window along time (default: the model's "
                     "clip; the whole video when it is shorter)")
    vid.add_argument("--stride-frames", type=int, help="frames between windows (default half a window)")
    vid.add_argument("--mode", default="gf", choices=["gf", "multidiffusion", "gaussian"], help="fusion along time")
    vid.add_argument("--sampler", help="flow_euler (Wan's default), ddim (bounce's), ddpm, euler, heun")
    vid.add_argument("--steps", type=int, help="steps (default 50 for Wan, 32 otherwise)")
    vid.add_argument("--vcf", action="store_true", help="variance-corrected fusion (ddpm)")
    vid.add_argument("--style-alpha", type=float, default=0.0, help="style alignment of the initial noise, 0..1")
    vid.add_argument("--circular", action="store_true", help="a looping video: windows wrap along time")
    vid.add_argument("--seeds", default="0", help="one video per seed (default 0)")
    vid.add_argument("--fps", type=int, default=8, help="MP4 frames per second (default 8)")
    vid.add_argument("--out", default="runs/video", help="folder for the videos (a re-run resumes it)")
    vid.add_argument("--device", help=_DEVICE)
    vid.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                     help="Wan: weights and activations (default float32)")
    vid.set_defaults(func=_video, resumable=True)

    ui = sub.add_parser("ui", parents=[common], help="a local web page to try every method side by side (Gradio)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    ui.add_argument("--share", action="store_true", help="also open Gradio's public share link (off by default)")
    ui.add_argument("--model", action="append", help="a model folder or checkpoint the CLI accepts (a pipeline "
                    "folder, an EDM2 .safetensors), added to the bundled models; repeatable")
    ui.set_defaults(func=_ui)

    up = sub.add_parser("upscale", parents=[common], help="an image upscaled over windows (img2img window fusion)")
    up.add_argument("image", help="the image (PNG, JPEG, ...)")
    up.add_argument("--model", required=True, help="a diffusers pipeline folder (SD 1.x/2.x, SDXL, SD3, FLUX, "
                    "Chroma, PixArt, Z-Image): for photos; or a bundled / EDM model (e.g. scenes), which knows only "
                    "its toy world (24-pixel landscapes) and turns a photo into its textures")
    up.add_argument("--class", dest="klass", help="bundled / EDM models: a class index or 'none' (default none)")
    up.add_argument("--scale", type=_finite(), default=2.0, help="size factor (default 2)")
    up.add_argument("--strength", type=_finite(), default=0.35, help="how much is redrawn, in [0, 1] (default 0.35)")
    up.add_argument("--prompt", help="the prompt")
    up.add_argument("--negative-prompt", default="", help="CFG's negative prompt")
    up.add_argument("--guidance", help="SPEC inside every window (default cfg:w=6.5 for pipelines, none otherwise)")
    up.add_argument("--seeds", default="0", help="one image per seed (default 0)")
    up.add_argument("--steps", type=int, default=50, help="the schedule's steps; the last strength x steps run")
    up.add_argument("--mode", default="gf", choices=["gf", "multidiffusion"], help="window state fusion")
    up.add_argument("--stride", type=int, default=8, help="latent pixels between windows (default 8)")
    up.add_argument("--sampler", help="ddim (default; flow_euler for flow pipelines), ddpm, euler, heun")
    up.add_argument("--vcf", action="store_true", help="variance-corrected fusion (ddpm)")
    up.add_argument("--filter", default="lanczos", help="resize filter: lanczos, bicubic, bilinear, nearest")
    up.add_argument("--progressive", action="store_true", help="x2 stages, each from the previous (DemoFusion)")
    up.add_argument("--max-batch", type=int, default=8, help="window-sized inputs per network call (default 8): "
                    "the network's activations are held for that many windows at a time")
    up.add_argument("--view-batch", type=int, help="windows stepped and folded at a time, so a step holds one view "
                    "batch's states instead of every window's (default: all at once)")
    up.add_argument("--max-memory", type=float, help="GiB the canvas and the window states may take; the view batch "
                    "is chosen to fit, a canvas that cannot is refused (default: all windows at once; on a GPU, its "
                    "free memory)")
    up.add_argument("--out", default="runs/upscale", help="folder for upscaled_SEED.png and settings.json")
    up.add_argument("--device", help=_DEVICE)
    up.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                    help="weights and activations (default float32)")
    up.set_defaults(func=_upscale, resumable=True)

    met = sub.add_parser("metrics", parents=[common], help="FID, FD-DINOv2, KID, IS, precision/recall of images")
    met.add_argument("images", help="a folder of images (recursively) or an .npz with an 'images' array")
    met.add_argument("--ref", help="reference: windowguide/pytorch-fid .npz, EDM2 .pkl, or a bundled dataset name")
    met.add_argument("--metrics", help="comma-separated: fid,fd_dinov2,kid,is,pr (default fid,kid,is,pr, less "
                                       "those the image count cannot support, each named)")
    met.add_argument("--make-ref", action="store_true", help="write the images' reference statistics to --out")
    met.add_argument("--out", help="with --make-ref: the REF.npz to write")
    met.add_argument("--features", default="inception",
                     help="network in the Inception's role: inception, or a bundled NAME-classifier")
    met.add_argument("--inception", help="pt_inception-2015-12-05-6726825d.pth (or $WINDOWGUIDE_INCEPTION)")
    met.add_argument("--dinov2", help="local DINOv2 ViT-L/14 folder, transformers format (or $WINDOWGUIDE_DINOV2)")
    met.add_argument("--batch-size", type=int, default=64, help="images per feature-network call (default 64)")
    met.add_argument("--device", help=_DEVICE)
    met.add_argument("--json", help="write the result here")
    met.add_argument("--protocol", choices=["pytorch-fid", "edm2"],
                     help="how images reach the Inception/DINOv2: pytorch-fid (PyTorch bilinear, transformers' "
                          "DINOv2) or edm2 (TF 1.x bilinear and (x - 128) / 128, torch.hub's DINOv2 positions: the "
                          "M-SWG and EDM2 papers' numbers); default: the reference's own")
    met.set_defaults(func=_metrics)

    tiny = sub.add_parser("tiny-pipeline", parents=[common], help="save a tiny diffusers pipeline with random "
                          "weights (nothing downloaded) to try the pipeline commands offline")
    tiny.add_argument("folder", help="the folder to write")
    tiny.add_argument("--kind", default="sd", choices=["sd", "sdxl"], help="StableDiffusion (default) or SDXL")
    tiny.set_defaults(func=_tiny)

    pr = sub.add_parser("presets", parents=[common], help="the papers' settings by name, with sources")
    pr.set_defaults(func=_presets)

    cv = sub.add_parser("convert", parents=[common],
                        help="an EDM2 .pkl to .safetensors, a DiT .pt to a diffusers folder (nothing in them runs)")
    cv.add_argument("src", help="EDM2 network pickle (.pkl) or DiT state dict (.pt)")
    cv.add_argument("--out", required=True, help="EDM2: the .safetensors to write; DiT: the folder")
    cv.add_argument("--key", default="ema", help="EDM2: which network of the pickle (default ema)")
    cv.add_argument("--heads", type=int, help="DiT: attention heads, when the width is not a DiT size's")
    cv.set_defaults(func=_convert)

    tr = sub.add_parser("train", parents=[common], help="train a diffusion model (EDM) or, with --classifier, a classifier")
    tr.add_argument("--preset", help="recipe of a bundled model (digits, digits-weak, digits-wd, mirror, ...)")
    tr.add_argument("--dataset", help="digits, mirror, a folder of images or an .npz file")
    tr.add_argument("--out", required=True, help="folder: state.safetensors (resumable) and model.safetensors")
    tr.add_argument("--classifier", action="store_true", help="train the feature classifier instead")
    tr.add_argument("--steps", type=int, help="optimiser steps (default: the preset's)")
    tr.add_argument("--batch", type=int, help="images per step (default: the preset's)")
    tr.add_argument("--lr", type=_finite(), help="learning rate (default: the preset's)")
    tr.add_argument("--base", type=int, help="UNet width")
    tr.add_argument("--mults", type=_mults, help="channel multipliers per level, e.g. 1,2,2")
    tr.add_argument("--weight-decay", type=_finite(), help="AdamW weight decay (the -wd models: 1.0)")
    tr.add_argument("--label-dropout", type=_finite(), help="share of labels replaced by the null label (CFG's "
                                                              "unconditional model), e.g. 0.1")
    tr.add_argument("--unconditional", action="store_true", help="train without labels")
    tr.add_argument("--seed", type=int, help="seed of every random draw of training")
    tr.add_argument("--checkpoint-every", type=int, help="steps between resumable checkpoints")
    tr.add_argument("--w2s", choices=["mg", "ag", "branch", "sgg"],
                    help="weak-to-strong guidance in training: the model learns the guided prediction")
    tr.add_argument("--w2s-weight", type=_finite(), help="its weight w (0 = none; a CFG scale is 1 + w)")
    tr.add_argument("--w2s-split", type=_finite(), help="sgg: CFG difference above this sigma (default 1)")
    tr.add_argument("--w2s-low", choices=["branch", "ag"], help="sgg: the low-noise source (default branch)")
    tr.add_argument("--w2s-weak", help="ag: the weak model (default: the preset's NAME-weak)")
    tr.set_defaults(func=_train, resumable=True)
    for action in sub._choices_actions:           # 'windowguide CMD --help' opens with the same line
        sub.choices[action.dest].description = sub.choices[action.dest].description or action.help
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. Failures are one line on stderr: exit status 2 for bad input (the value and
    what is accepted), 1 for a run that failed, 130 for Ctrl-C; ``--debug`` shows the traceback."""
    args = build_parser().parse_args(argv)
    with _thread_rule(args):
        return _dispatch(args)


@contextlib.contextmanager
def _thread_rule(args):
    """One rule for every command that computes: --threads, else the cores idle when it starts; the
    caller's thread count comes back afterwards (main() called from Python, e.g. by the tests)."""
    if args.func in _NO_COMPUTE:
        yield
        return
    import torch
    from .cpu import use_threads
    before = torch.get_num_threads()
    args.threads_used = use_threads(getattr(args, "threads", None))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _dispatch(args) -> int:
    """Run the command; failures become one line and an exit status (``main``'s docstring)."""
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("windowguide: interrupted; " + ("run the same command again to resume" if args.resumable else
                                              "nothing was kept; this command does not resume"), file=sys.stderr)
        return 130
    except RunError as e:
        if args.debug:
            raise
        print(f"windowguide: failed: {_one_line(e)}", file=sys.stderr)
        return 1
    except WindowguideError as e:                              # bad input: one clear line, not a traceback
        if args.debug:
            raise
        print(f"windowguide: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        if args.debug:
            raise
        print("windowguide: failed: out of memory; try a smaller size, fewer seeds at once (--batch-size) or a "
              "smaller --max-batch", file=sys.stderr)
        return 1
    except Exception as e:                                     # not windowguide's refusal: a bug, said as one
        if args.debug:
            raise
        where = _save_traceback()
        print(f"windowguide: internal error (a bug in windowguide, not your input): {type(e).__name__}: "
              f"{_one_line(e)[:500]}; the traceback is in {where} (or run again with --debug)", file=sys.stderr)
        return 1


def _save_traceback() -> str:
    """Write the current exception's traceback to a new file in the temporary folder; its path."""
    import tempfile
    import traceback
    fd, path = tempfile.mkstemp(prefix="windowguide-traceback-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(traceback.format_exc())
    return path


_NO_COMPUTE = (_presets, _ui)       # commands that draw nothing: no thread count to choose


def _one_line(e: BaseException) -> str:
    """The message on one line: its lines joined as sentences (the SPEC syntax after the problem)."""
    parts = [p.strip() for p in str(e).split("\n") if p.strip()]
    return " ".join(p if p[-1] in ".;:!?" or i == len(parts) - 1 else p + "." for i, p in enumerate(parts))


if __name__ == "__main__":
    sys.exit(main())

