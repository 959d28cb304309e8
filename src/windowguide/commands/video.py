"""``windowguide video --model MODEL --frames N [--prompt ...] [--guidance ...] [--window-frames K]``: one video
per seed, written as ``video_SEED.mp4`` (H.264 through PyAV) and its frames ``video_SEED/frame_NNNN.png``,
with ``settings.json``; a re-run skips the seeds whose MP4 exists (the MP4 is written last, atomically).

MODEL: a diffusers Wan pipeline folder (``--prompt``; frames = 4k + 1, the VAE's time compression) or a
bundled / saved video model (``bounce``; frames in the model's own units). With ``--window-frames`` shorter
than the video, clip-length windows along time are fused (``video.long_video``: ``--mode gf`` /
multidiffusion / gaussian, ``--vcf`` under ddpm, ``--style-alpha``, ``--circular`` for a loop); the
``--guidance`` recipe (CFG, M-SWG with a TxHxW window for crops in time) acts inside each window."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from .. import distributed, spec
from ..errors import WindowguideError
from ..files import check_out_dir, write_png
from ..fusion import canvas_layout, check_fusion
from ..generate import parse_seeds
from .common import MAX_STEPS, check_count, draw_missing, finish, rank_device
from .runfolder import claim, done, subfolder

MIN_VIEW_SIDE = 64       # an MP4's frames are enlarged (whole pixels) to at least this many pixels a side


def write_mp4(frames: np.ndarray, path: str, fps: int = 8) -> None:
    """uint8 frames [F, H, W, 3] (or [F, H, W, 1]) as an H.264 MP4, through ``files.atomic_write`` (a unique
    temporary beside it, renamed; a link at ``path`` is replaced, never written through). Frames under 64
    pixels a side are enlarged by whole pixels (nearest) so that a player shows them at a visible size."""
    import av
    from ..files import atomic_write
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    h, w = frames.shape[1:3]
    k = max(1, -(-MIN_VIEW_SIDE // min(h, w)))
    if (h * k) % 2 or (w * k) % 2:         # yuv420p needs even sides
        k += 1
    if k > 1:
        frames = frames.repeat(k, axis=1).repeat(k, axis=2)
        h, w = k * h, k * w

    def encode(f):
        with av.open(f, "w", format="mp4") as c:
            stream = c.add_stream("libx264", rate=int(fps))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"   # what every player reads
            stream.options = {"crf": "15"}                                  # near-lossless; the PNGs are exact
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    c.mux(packet)
            for packet in stream.encode():
                c.mux(packet)
    atomic_write(path, encode)


def read_mp4(path: str) -> np.ndarray | None:
    """The MP4's frames, uint8 [F, H, W, 3], or None when it does not decode."""
    import av
    try:
        with av.open(path) as c:
            return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    except (av.error.FFmpegError, ValueError, OSError):
        return None


def run(model: str, prompt: str | None = None, negative_prompt: str = "", frames: int | None = None,
        height: int | None = None, width: int | None = None, guidance: str | None = None,
        window_frames: int | None = None, stride_frames: int | None = None, mode: str = "gf",
        sampler: str | None = None, steps: int | None = None, vcf: bool = False, style_alpha: float = 0.0,
        circular: bool = False, seeds: Any = "0", out: str = "runs/video", fps: int = 8, device: Any = "cpu",
        dtype: str = "float32", progress: bool = True) -> dict:
    """Draw one video per seed and write it (module docstring); returns the settings."""
    from .sample_pipeline import is_pipeline_dir
    from ..errors import require_module
    require_module("av", "windowguide video writes MP4s with PyAV", "pip install -e '.[video]' (from the clone)")
    seeds = parse_seeds(seeds)
    if not (isinstance(style_alpha, (int, float)) and 0 <= style_alpha <= 1):
        raise WindowguideError(f"--style-alpha {style_alpha}: accepted: a number in [0, 1]")
    for v, flag in ((steps, "--steps"), (frames, "--frames"), (window_frames, "--window-frames"),
                    (stride_frames, "--stride-frames"), (fps, "--fps")):
        if v is not None:
            check_count(v, flag, maximum=MAX_STEPS if flag == "--steps" else None)
    check_out_dir(out)
    r, device = rank_device(device)
    src = (_pipeline_source if is_pipeline_dir(model) else _bundled_source)(
        model, prompt, negative_prompt, frames, height, width, guidance, device, dtype)
    shape = src["shape"]
    clip = min(src["clip"], shape[1]) if window_frames is None else src["latent_frames"](window_frames)
    window = (shape[0], clip, *shape[2:])
    if window[1] > shape[1]:
        raise WindowguideError(f"--window-frames {window_frames} is longer than the video ({frames} frames)")
    stride = max(1, window[1] // 2) if stride_frames is None else src["latent_stride"](stride_frames)
    sampler = sampler or src["sampler"]
    steps = steps or src["steps"]
    check_fusion(mode, None, None, sampler, vcf, {})          # refuse a bad mode / sampler / VCF before writing
    canvas_layout(1, shape[0], shape[1:], window[1:], (stride, *window[2:]), (bool(circular), False, False), device,
                  f"a video of {src['frames']} frames")        # refuses a video too large for memory, or a bad stride
    settings = dict(model=model if not os.path.exists(model) else os.path.abspath(model), prompt=prompt,
                    negative_prompt=negative_prompt, frames=src["frames"], latent=list(shape), window=list(window),
                    stride=stride, mode=mode, sampler=sampler, steps=steps, vcf=vcf, style_alpha=style_alpha,
                    circular=circular, guidance=spec.canonical(src["guidance"]), fps=fps)
    claim(out, "video", settings)
    path_of = lambda seed: os.path.join(out, f"video_{seed:06d}.mp4")
    frame_of = lambda seed, i: os.path.join(out, f"video_{seed:06d}", f"frame_{i:04d}.png")
    # an MP4 that decodes with every frame beside it; else the seed again
    finished = lambda seed: done(path_of(seed), read_mp4) and all(done(frame_of(seed, i)) for i in range(src["frames"]))

    def draw(batch):                              # one seed at a time: a batch of one
        seed = batch[0]
        with torch.no_grad():
            video = src["decode"](_draw(src, seed, window, stride, mode, sampler, steps, vcf, style_alpha, circular,
                                        progress and r.main))[0]
        if not distributed.writes():
            return
        subfolder(out, f"video_{seed:06d}")
        for i, frame in enumerate(video):
            write_png(frame, frame_of(seed, i))
        write_mp4(video, path_of(seed), fps)
    draw_missing(seeds, r, path_of, 1, draw, progress, finished=finished, fused=True)
    finish(out, r, lambda: None)
    return settings


def _draw(src, seed, window, stride, mode, sampler, steps, vcf, style_alpha, circular, progress) -> torch.Tensor:
    """One seed's latent video: one window over the whole video, or fused clip-length windows."""
    import windowguide as wg
    from ..video import long_video
    shape, sigmas = src["shape"], src["sigmas"](steps)
    if tuple(window) == tuple(shape) and not circular:
        return wg.sample(src["denoiser"], shape, [seed], sampler=sampler, sigmas=sigmas, cond=src["cond"],
                         guidance=src["terms"], progress=progress)
    return long_video(src["denoiser"], shape, [seed], window[1:], stride=(stride, *window[2:]), mode=mode,
                      sampler=sampler, sigmas=sigmas, guidance=src["terms"], cond=src["cond"], vcf=vcf,
                      style_alpha=style_alpha, circular=circular, progress=progress)


def _pipeline_source(folder, prompt, negative_prompt, frames, height, width, guidance, device, dtype) -> dict:
    """A Wan pipeline folder: its denoiser, the prompt's condition and CFG null, its schedule and decoder."""
    from ..adapters.registry import from_pipeline
    from ..adapters.wan import latent_frames
    from .sample_pipeline import no_weak, load_pipeline
    pipe = load_pipeline(folder, device, dtype)
    m = from_pipeline(pipe)
    if m.clip is None:
        raise WindowguideError(f"{folder}: a {m.family} pipeline makes images; windowguide video takes a video "
                               f"pipeline (Wan)")
    if prompt is None:
        raise WindowguideError("a Wan pipeline needs a prompt (--prompt)")
    vt, vs = m.clip.vae_factor_temporal, m.vae_factor
    frames = frames or m.clip.pixel_frames
    t = latent_frames(frames, vt)
    h, w = (v // vs if v else d for v, d in ((height, m.size[0]), (width, m.size[1])))
    if h % m.multiple or w % m.multiple:
        raise WindowguideError(f"--height/--width must be multiples of {vs * m.multiple} pixels")
    guidance = guidance or m.clip.guidance         # the family's own default (Wan: its guidance_scale 5.0)
    pos, neg = m.encode(prompt=prompt, negative_prompt=negative_prompt)
    m.denoiser.null_cond = {k: v[0] for k, v in neg.items()}      # one null for every row
    terms = spec.build(guidance, spec.Context(net=None, load=no_weak))
    return dict(shape=(m.channels, t, h, w), frames=frames, clip=m.clip.frames, denoiser=m.denoiser, cond=pos, terms=terms,
                guidance=guidance, sigmas=lambda steps: m.sigmas(steps), sampler="flow_euler", steps=50,
                decode=m.decode, latent_frames=lambda f: latent_frames(f, vt), latent_stride=lambda f: max(1, f // vt))


def _bundled_source(model, prompt, negative_prompt, frames, height, width, guidance, device, dtype) -> dict:
    """A bundled / saved video model (pixel space): its denoiser, the Karras schedule, frames as images."""
    from ..models.checkpoint import load_denoiser, read_info
    from ..sampling import karras_sigmas
    if read_info(model)["kind"] != "video":
        raise WindowguideError(f"--model {model}: an image model; windowguide video takes a video model (bounce) or a "
                               f"Wan pipeline folder")
    if prompt is not None or height or width:
        raise WindowguideError(f"--prompt/--height/--width: {model} is an unconditional video model of a fixed frame "
                               f"size; leave them out")
    denoiser, info, net = load_denoiser(model, device)
    c, clip, h, w = info["shape"]
    if c not in (1, 3):
        raise WindowguideError(f"--model {model}: {c} channels; a video is written from 1 (grey) or 3 (RGB) channels")
    frames = frames or clip
    if frames % net.multiple:
        raise WindowguideError(f"--frames {frames}: accepted: a multiple of {net.multiple} (this network's factor)")
    guidance = guidance or "none"
    terms = spec.build(guidance, spec.Context(net=net, load=None))

    def decode(x):
        """[N, C, T, H, W] in [-1, 1] -> uint8 [N, T, H, W, 3] (grey repeated to RGB)."""
        v = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
        return v.repeat(1, 1, 1, 1, 3 // c).numpy()
    return dict(shape=(c, frames, h, w), frames=frames, clip=clip, denoiser=denoiser, cond=None, terms=terms, guidance=guidance,
                sigmas=lambda steps: karras_sigmas(steps, 0.002, 80.0), sampler="ddim", steps=32, decode=decode,
                latent_frames=lambda f: f, latent_stride=lambda f: f)


__all__ = ["run", "write_mp4", "read_mp4"]
