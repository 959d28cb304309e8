"""Layer 5: sampling on a canvas larger than the model by fusing windows (docs/algorithms.md §4).

Windows of the model's native size cover the canvas (``windows.layout``; the last window flush with the
edge, or wrapping around for 360-degree panoramas). Two places to fuse, ``fuse=``:

- ``"state"`` (MultiDiffusion, Guided Fusion): every window takes its own sampler step from its own
  crop, with its own noise z_i; the next canvas state is the weighted mean of the window states,
      x' = sum_i m_i x'_i / sum_i m_i.
- ``"prediction"`` (Mixture of Diffusers): the window predictions are fused into one canvas
  prediction D = sum_i m_i D_i / sum_i m_i and the sampler takes one global step (noise drawn once).

For single-evaluation deterministic steps (DDIM, Euler) the two are the same, since the step is
affine in D with the same coefficients for every window. For stochastic steps, averaging n window
states averages n independent noises: the noise std shrinks to s / sqrt(n) and the image blurs.
Variance-Corrected Fusion (VCF) restores it; with W = sum m_i, S = sum m_i^2 per pixel:
      x' = (W / sqrt(S)) xbar_w + (1 - W / sqrt(S)) mubar_w  = mubar_w + s sum_i m_i z_i / sqrt(S),
(uniform weights: W / sqrt(S) = sqrt(n)). Here it is applied by scaling every window's noise by
W / sqrt(S) before the states are averaged, which gives exactly that value (``vcf_fuse`` is the
paper's form, and the tests check one against the other).

Style Alignment (SA) slerps the initial canvas noise toward a reference window-sized noise tile
repeated over a grid of window-sized cells.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import torch

from .conds import Cond, check_cond, cond_batch_size, cond_repeat, cond_select, cond_to
from .denoiser import Denoiser, as_denoiser, check_size
from .generate import check_sampler_options, parse_seeds, schedule_sigmas
from .guidance import CFG, Guidance, GuidedDenoiser, guided
from .sampling import (SAMPLERS, PerSampleNoise, churn_step, begin_step, check_finite, check_sigmas, finite_check,
                       init_noise_scale)
from .windows import Layout, layout, regions_of_call
from .distributed import Ranks, reduce_canvas, window_ranks
from .errors import WindowguideError

MODES = {   # mode -> (what is fused, window weights)
    "multidiffusion": ("state", "uniform"),
    "gf": ("state", "cone"),
    "gaussian": ("prediction", "gaussian"),
}


class FusedDenoiser(Denoiser):
    """Prediction fusion: D(x) = sum_i m_i ⊙ D(crop_i x) / sum_i m_i on the whole canvas; with a
    ``view_batch`` the windows are evaluated and accumulated that many at a time (``ViewBatches``: a batch
    that runs out of memory is halved; under a process group the batches are split over the ranks)."""

    def __init__(self, window_denoiser: Any, lay: Layout, weighting: Any = "uniform", view_batch: int | None = None):
        self.inner = as_denoiser(window_denoiser)
        self.layout, self.weighting, self.view_batch = lay, weighting, check_view_batch(view_batch)
        self.multiple = 1
        self.sigma_min, self.sigma_max = self.inner.sigma_min, self.inner.sigma_max
        self.null_cond = self.inner.null_cond
        self._batches = None

    def begin_step(self, i, sigmas):
        begin_step(self.inner, i, sigmas)
        if self._batches is not None:
            self._batches.begin_step(i, sigmas)

    def forward(self, x, sigma, cond):
        lay, split = self.layout, window_ranks()
        if self._batches is None or self._batches.n != x.shape[0]:
            self._batches = ViewBatches(self.inner, lay, x.shape[0], x.shape[1], self.view_batch, split)
        total = lay.accumulator(x)
        for owner, ks in list(self._batches.runs):
            if owner % split.world == split.rank:
                self._predict(x, sigma, cond, total, owner, ks)
        if split.active:
            reduce_canvas(total)
        return lay.finish(total, self.weighting)

    def _predict(self, x, sigma, cond, total, owner, ks) -> None:
        """Add m_k D(crop_k x) of the windows ``ks`` to ``total``; out of memory, halve them and again."""
        lay, inner = self.layout, self._batches.inner(ks)
        try:
            with placed(inner, lay, ks, x.shape[0]):
                out = inner(lay.crop_windows(x, ks), sigma.repeat_interleave(len(ks)), lay.window_conds(cond, ks))
        except Exception as exc:
            if not out_of_memory(exc):
                raise
            del exc
            for part in self._batches.halve(owner, ks):
                self._predict(x, sigma, cond, total, owner, part)
            return
        lay.accumulate(total, out, ks, self.weighting)


def placed(denoiser: Any, lay: Any, ks, n: int):
    """Within the block, a network that takes positions (``canvas_positions``: ids or RoPE) sees each of
    the windows ``ks`` of each of the n samples at its place on the canvas (``windows.current_regions``);
    others see each window as an image."""
    base = getattr(denoiser, "denoiser", denoiser)
    if not getattr(base, "canvas_positions", False):
        return regions_of_call(None)
    return regions_of_call(lay.regions(1)[torch.tensor(list(ks))].repeat(n, 1),
                           torch.arange(n).repeat_interleave(len(ks)))       # rows are sample-major


def check_view_batch(view_batch: Any) -> int | None:
    """A view batch: a positive number of windows at a time, or None (all at once)."""
    if view_batch is not None and (isinstance(view_batch, bool) or not isinstance(view_batch, int) or view_batch < 1):
        raise WindowguideError(f"view_batch {view_batch!r}: accepted: a positive integer (windows at a time) or None "
                               f"(all at once)")
    return view_batch


def vcf_fuse(states: torch.Tensor, means: torch.Tensor, lay: Layout, weighting: Any = "uniform") -> torch.Tensor:
    """Guided VCF (the paper's form) of window states x_i = mu_i + s z_i, both [N*K, C, h, w]:

        x = (W / sqrt(S)) xbar_w + (1 - W / sqrt(S)) mubar_w,   W = sum m_i, S = sum m_i^2.
    """
    ratio = vcf_ratio(lay, weighting, states.device, states.dtype)
    return ratio * lay.fold(states, weighting) + (1 - ratio) * lay.fold(means, weighting)


def vcf_ratio(lay: Layout, weighting: Any, device, dtype) -> torch.Tensor:
    """W / sqrt(S) at every canvas entry, [*shape] ([H, W] for an image, [T, H, W] for a video)."""
    m = lay.weights(weighting, device, dtype)
    return lay.total_weight(m, device, dtype) / lay.total_weight(m * m, device, dtype).sqrt()


class WindowNoise:
    """Independent noise for every window of every sample, each sample's from its own generator.
    With ``scale`` (a [H, W] canvas map, VCF's W / sqrt(S)) each window's noise is multiplied by the
    crop of that map."""

    def __init__(self, base: PerSampleNoise, lay: Layout, scale: torch.Tensor | None = None, ks=None):
        self.base, self.layout, self.scale, self.ks = base, lay, scale, ks

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        k = self.layout.n if self.ks is None else len(self.ks)
        # a view batch's windows draw the next k windows' numbers of each sample's stream, so a step drawn in
        # view batches takes the numbers the whole step would (window sizes a multiple of 16 values: torch's
        # CPU normal draws blocks of 16)
        z = torch.stack([torch.randn((k, *like.shape[1:]), generator=g) for g in self.base.generators])
        z = z.reshape(-1, *like.shape[1:]).to(device=like.device, dtype=like.dtype)
        if self.scale is not None:
            canvas = self.scale[None, None].to(z)
            crops = self.layout.crop(canvas) if self.ks is None else self.layout.crop_windows(canvas, self.ks)
            z = z * crops.repeat(len(self.base.generators), *[1] * (crops.dim() - 1))
        return z


def adds_noise_after_update(sampler: str, options: dict) -> bool:
    """Whether a step adds noise after the update (DDPM, DDIM with eta > 0): the noise VCF corrects."""
    return sampler == "ddpm" or (sampler == "ddim" and options.get("eta", 0.0) > 0)


def _check_vcf(sampler: Any, options: dict) -> None:
    """VCF needs noise added after the fused update; say why not otherwise. A step given as a function
    says so by its ``noise_after_update`` attribute."""
    if callable(sampler):
        if not getattr(sampler, "noise_after_update", False):
            raise WindowguideError(f"VCF with {getattr(sampler, '__name__', sampler)!r}: its noise does not enter "
                                   f"after the update, so the step has no mean to correct around")
        return
    if not adds_noise_after_update(sampler, options):
        raise WindowguideError(f"VCF corrects noise added after the fused update, but sampler {sampler!r} "
                               f"with {options or 'default options'} adds none; use ddpm or ddim with eta > 0 "
                               f"(EDM churn is drawn once on the canvas and needs no correction)")


def sample_fused_states(window_denoiser: Callable, x: torch.Tensor, sigmas, cond: Cond, lay: Layout,
                        weighting: Any = "uniform", sampler: str = "ddim", noise: PerSampleNoise | None = None,
                        vcf: bool = False, progress: bool = False, callback: Callable | None = None,
                        view_batch: int | None = None, **options) -> torch.Tensor:
    """State fusion: each step, every window takes one ``sampler`` step (a windowguide sampler's name or a
    step function, ``run_fused``) from its crop with its own noise, and the canvas becomes the weighted
    mean of the window states (VCF-corrected if ``vcf``):

        x' = sum_i m_i x'_i / sum_i m_i,   x'_i = step(crop_i x, D_i, z_i).

    EDM churn (noise added *before* the network is called) is drawn once on the canvas, so every
    window sees input noise of exactly sigma_hat; only noise added after the update (DDPM, DDIM
    eta > 0) is drawn per window and is what VCF corrects. ``noise`` holds one generator per sample
    (default: seeds 0..N-1); ``callback(i, x, denoised, sigma)`` sees each step's fused prediction.
    ``view_batch``: windows stepped and folded at a time (None: all at once); a view batch that runs out
    of memory is halved and retried (``ViewBatches``); under a process group the view batches are split
    over the ranks (``_streamed_step``)."""
    from tqdm.auto import trange
    window_denoiser = as_denoiser(window_denoiser)
    sigmas = check_sigmas(sigmas).tolist()
    n_steps = len(sigmas) - 1
    churn = {key: options.pop(key) for key in ("churn", "s_tmin", "s_tmax", "s_noise") if key in options}
    if vcf:
        _check_vcf(sampler, options)
    step, name = (sampler, getattr(sampler, "__name__", "step")) if callable(sampler) else (SAMPLERS[sampler], sampler)
    noise = noise or PerSampleNoise.from_seeds(range(x.shape[0]))
    scale = vcf_ratio(lay, weighting, x.device, x.dtype) if vcf else None
    split = window_ranks()
    batches = ViewBatches(window_denoiser, lay, x.shape[0], x.shape[1], check_view_batch(view_batch), split)
    for i in trange(n_steps, disable=not progress, desc=f"{name} (fused states)", leave=False):
        begin_step(window_denoiser, i, sigmas)
        batches.begin_step(i, sigmas)
        s = sigmas[i]
        if churn.get("churn", 0.0) > 0:
            x, s = churn_step(x, s, n_steps, churn["churn"], churn.get("s_tmin", 0.0), churn.get("s_tmax", math.inf),
                              churn.get("s_noise", 1.0), noise)
        x = _streamed_step(x, [s, sigmas[i + 1]], i, cond, lay, weighting, step, noise, scale, batches, callback,
                           options, split)
    return x


def view_batches(lay: Any, window_values: int, size: int) -> list[list[int]]:
    """The layout's windows in runs of about ``size`` (a view batch): every run but the last holds a
    multiple of 16 values per sample, so each sample's noise stream is drawn as one whole step draws it."""
    step = max(1, int(size))
    while (step * window_values) % 16:
        step += 1
    ks = list(range(lay.n))
    runs = [ks[a:a + step] for a in range(0, lay.n, step)]
    if len(runs) > 1 and len(runs[-1]) * window_values < 16:      # a last run under 16 values joins the one before
        runs[-2:] = [runs[-2] + runs[-1]]
    return runs


class ViewBatches:
    """The view batches of a fused run: (owner, windows) runs (``view_batches``; all windows in one run when
    ``size`` is None, or a 1/K share each over K ranks of ``split``), each with its guided denoiser
    (per-window CFG nulls cut to its rows), made once and kept across steps. ``owner`` is the run's index
    when it was made: a run halved after running out of memory keeps it, so the ranks of one canvas agree
    on who steps what."""

    def __init__(self, denoiser, lay, n: int, channels: int, size: int | None, split: Ranks = Ranks()):
        self.denoiser, self.lay, self.n = denoiser, lay, n
        self.values = channels * math.prod(lay.window)
        if size is None and split.active:           # one canvas over several processes: a share each
            size = -(-lay.n // split.world)
        runs = [list(range(lay.n))] if size is None else view_batches(lay, self.values, size)
        self.runs = list(enumerate(runs))
        self._inner, self._step = {}, None

    def inner(self, ks) -> Any:
        """The guided denoiser of the windows ``ks`` (rows j K + w of every sample j)."""
        key = tuple(ks)
        if key not in self._inner:
            k = self.lay.n
            self._inner[key] = _rows_of(self.denoiser, torch.tensor([j * k + w for j in range(self.n) for w in ks]))
            if self._step is not None:
                begin_step(self._inner[key], *self._step)
        return self._inner[key]

    def begin_step(self, i: int, sigmas) -> None:
        self._step = (i, sigmas)
        for inner in self._inner.values():
            begin_step(inner, i, sigmas)

    def halve(self, owner: int, ks: list[int]) -> list[list[int]]:
        """Replace the run ``ks`` by its two halves (each a multiple of 16 values per sample, so the noise
        streams are drawn as before), for this and every later step; refused when it cannot be halved."""
        half = max(1, len(ks) // 2)
        while half < len(ks) and (half * self.values) % 16:
            half += 1
        if half >= len(ks):
            raise WindowguideError(f"a view batch of {len(ks)} window(s) ran out of memory and cannot be halved "
                                   f"further; accepted: a smaller canvas, window or model, or a larger device")
        parts = [ks[:half], ks[half:]]
        at = self.runs.index((owner, ks))
        self.runs[at:at + 1] = [(owner, p) for p in parts]
        return parts


def out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is the device (or the machine) running out of memory."""
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def _streamed_step(x, pair, i, cond, lay, weighting, step, noise, scale, batches, callback, options,
                   split: Ranks = Ranks()) -> torch.Tensor:
    """One fused step over view batches: each batch of windows is cropped, stepped and folded into the
    canvas accumulators at once, so no step holds every window's state (the sums are ``fold``'s, in its
    order). The per-window CFG nulls are the rows of each batch's windows. Over several processes
    (``split``) run c is rank c mod K's; the others step it with a zero prediction, which draws its noise
    exactly as the real step does (so every rank's noise streams stay aligned) and costs no network call;
    the canvas sums are then added over the ranks."""
    sums = (lay.accumulator(x), lay.accumulator(x) if callback is not None else None)
    for owner, ks in list(batches.runs):
        _step_run(x, pair, cond, lay, weighting, step, noise, scale, batches, options, sums, owner, ks,
                  owner % split.world == split.rank)
    if split.active:
        for total in sums:
            if total is not None:
                reduce_canvas(total)
    if callback is not None:
        callback(i, x, lay.finish(sums[1], weighting), pair[0])
    return lay.finish(sums[0], weighting)


def _step_run(x, pair, cond, lay, weighting, step, noise, scale, batches, options, sums, owner, ks, mine) -> None:
    """Step the windows ``ks`` and fold them into ``sums`` (state, prediction); out of memory, the noise
    streams are put back and the run is halved and stepped again (``ViewBatches.halve``)."""
    seen, inner = {}, batches.inner(ks)
    states_before = [g.get_state() for g in noise.generators]

    def windows(x_w, sigma, c):
        with placed(inner, lay, ks, x.shape[0]):
            return inner(x_w, sigma, c)
    try:
        states = step(windows if mine else _zero_prediction, lay.crop_windows(x, ks), pair, lay.window_conds(cond, ks),
                      noise=WindowNoise(noise, lay, scale, ks),
                      callback=(lambda _, x_w, d, sg: seen.setdefault("d", d)) if sums[1] is not None else None,
                      **options)
    except Exception as exc:
        if not out_of_memory(exc):
            raise
        for g, state in zip(noise.generators, states_before):
            g.set_state(state)
        del exc
        for part in batches.halve(owner, ks):
            _step_run(x, pair, cond, lay, weighting, step, noise, scale, batches, options, sums, owner, part, mine)
        return
    if mine:
        lay.accumulate(sums[0], states, ks, weighting)
        if sums[1] is not None:
            lay.accumulate(sums[1], seen["d"], ks, weighting)


def _zero_prediction(x_w, sigma, cond):
    """Stands for the network on another rank's windows: the step's noise is drawn, nothing is evaluated."""
    return torch.zeros_like(x_w)


def _rows_of(denoiser: Any, rows: torch.Tensor) -> Any:
    """The guided denoiser of a view batch: its CFG nulls given per window cut to the batch's rows."""
    if not isinstance(denoiser, GuidedDenoiser):
        return denoiser
    terms = []
    for t in denoiser.guidance:
        null = getattr(t, "null", None)
        if isinstance(t, CFG) and null is not None and cond_batch_size(null) not in (0, None) and \
                cond_batch_size(null) > int(rows.max()):
            t = dataclasses.replace(t, null=cond_select(null, rows))
        terms.append(t)
    inner = GuidedDenoiser(denoiser.denoiser, Guidance(tuple(terms)), denoiser.max_batch)
    return inner


def style_aligned_noise(z: torch.Tensor, window: Sequence[int], alpha: float,
                        generators: Sequence[torch.Generator]) -> torch.Tensor:
    """SA: slerp(z, z_ref, alpha) per sample, z_ref a window-sized noise block (from the sample's
    generator: a tile for an image, the reference clip for a video) repeated over a grid of window-sized
    cells and cut to the canvas; the angle theta = arccos(<z, z_ref> / |z| |z_ref|) is taken over the
    whole tensor:

        slerp = sin((1 - alpha) theta) / sin(theta) z + sin(alpha theta) / sin(theta) z_ref.

    alpha = 0 returns z itself. Any number of axes: z is [N, C, *sizes], ``window`` one size per axis."""
    if not 0 <= alpha <= 1 or not math.isfinite(alpha):
        raise WindowguideError(f"style alpha must be in [0, 1], got {alpha}")
    if alpha == 0:
        return z
    c, sizes, window = z.shape[1], tuple(z.shape[2:]), tuple(window)
    out = torch.empty_like(z)
    for i, g in enumerate(generators):
        tile = torch.randn((c, *window), generator=g).to(z)
        ref = tile.repeat(1, *(math.ceil(s / k) for s, k in zip(sizes, window)))
        ref = ref[(slice(None),) + tuple(slice(0, s) for s in sizes)]
        a, b = z[i].double().flatten(), ref.double().flatten()
        theta = torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1, 1))
        s = torch.sin(theta)
        if s < 1e-6:     # (anti)parallel: slerp's limit is the straight line, and 0/0 must not give NaN
            mixed = (1 - alpha) * a + alpha * b
        else:
            mixed = (torch.sin((1 - alpha) * theta) / s) * a + (torch.sin(alpha * theta) / s) * b
        out[i] = mixed.view(c, *sizes).to(z)
    return out


def per_window_nulls(guidance: Any, n: int, k: int) -> Guidance:
    """CFG nulls given per sample ([n, ...]) repeated for the k windows of each sample."""
    terms = []
    for term in Guidance.of(guidance):
        null = getattr(term, "null", None)
        if isinstance(term, CFG) and null is not None and cond_batch_size(null) == n and n > 0:
            term = dataclasses.replace(term, null=cond_repeat(null, k))
        terms.append(term)
    return Guidance(tuple(terms))


def check_fusion(mode: str, fuse: str | None, weighting: Any, sampler: str, vcf: bool,
                 sampler_options: dict) -> tuple[str, Any, dict]:
    """(fuse, weighting, sampler options) of a fusion recipe, or a WindowguideError; cheap, so a
    command checks it before it writes anything."""
    if mode not in MODES:
        raise WindowguideError(f"unknown fusion mode {mode!r}; accepted: {sorted(MODES)}")
    fuse = fuse or MODES[mode][0]
    weighting = weighting if weighting is not None else MODES[mode][1]
    if fuse not in ("state", "prediction"):
        raise WindowguideError(f"fuse must be 'state' or 'prediction', got {fuse!r}")
    if sampler not in SAMPLERS:
        raise WindowguideError(f"unknown sampler {sampler!r}; accepted: {sorted(SAMPLERS)}")
    options = check_sampler_options(sampler, sampler_options)
    if vcf:
        _check_vcf(sampler, options)
    if vcf and fuse != "state":
        raise WindowguideError("VCF corrects fused window states; with fuse='prediction' the noise is drawn once "
                               "on the canvas and already has the sampler's variance")
    return fuse, weighting, options


def canvas_layout(n: int, channels: int, sizes: Sequence[int], window: Any, stride: Any = 8,
                  circular: Any = False, device: Any = None, what: str = "this canvas",
                  view_batch: int | None = None) -> Any:
    """The window layout of a fused run of n samples on a canvas of ``sizes`` (H, W or T, H, W), after
    refusing one whose canvas and windows cannot fit in the device's memory (``memory.check_fused_run``)
    before anything is allocated; cheap, so a command calls it before it writes anything."""
    from .memory import check_fused_run
    from .windows import layout_nd
    sizes = tuple(int(v) for v in sizes)
    win = (window,) * len(sizes) if isinstance(window, int) else tuple(window)
    check_fused_run(n, channels, sizes, win, stride, what, device, view_batch=view_batch)
    if len(sizes) == 2:
        return layout(sizes[0], sizes[1], window, stride=stride, circular=bool(circular))
    flags = tuple(circular) if isinstance(circular, (tuple, list)) else (bool(circular),) + (False,) * (len(sizes) - 1)
    return layout_nd(sizes, win, stride=stride, circular=flags)


def panorama(denoiser: Any, canvas: Sequence[int], seeds: Any, window: Any, stride: Any = 8,
             mode: str = "multidiffusion", fuse: str | None = None, weighting: Any = None,
             sampler: str = "ddim", steps: int = 50, guidance: Any = None, cond: Cond = None,
             sigmas: Any = None, shift: float = 1.0, vcf: bool = False, style_alpha: float = 0.0,
             circular: bool = False,
             max_batch: int | None = None, device: Any = None, dtype: torch.dtype = torch.float32,
             progress: bool = False, view_batch: int | None = None, **sampler_options) -> torch.Tensor:
    """Sample a (C, H, W) ``canvas`` larger than the model from windows of the model's size.

    window: the model's native (h, w); stride: between windows (the last one is flush with the edge;
    ``circular`` wraps along the width). mode: 'multidiffusion' (uniform, states), 'gf' (cone
    weights, states) or 'gaussian' (gaussian weights, predictions); ``fuse`` and ``weighting``
    override the mode's. guidance: any recipe, applied inside every window (M-SWG included).
    sigmas: an explicit schedule, else the sampler's default (``shift``: flow models' time shift).
    vcf: variance-corrected state fusion (stochastic samplers only). style_alpha: SA strength.
    max_batch: cap on window-sized inputs per network call. view_batch: windows stepped and folded at a time
    (state fusion), so a step holds one view batch's states, not every window's (the same result on a network
    whose outputs do not depend on its batch). Returns [len(seeds), C, H, W]."""
    fuse, weighting, options = check_fusion(mode, fuse, weighting, sampler, vcf, sampler_options)
    c, height, width = (int(v) for v in canvas)
    seeds = parse_seeds(seeds)
    check_cond(cond, len(seeds))
    lay = canvas_layout(len(seeds), c, (height, width), window, stride, circular, device, "the panorama", view_batch)
    base = as_denoiser(denoiser)
    inner = guided(base, per_window_nulls(guidance, len(seeds), lay.n), max_batch)
    check_size(base, (c, *lay.window), "window")
    if isinstance(inner, GuidedDenoiser):
        inner.check((c, *lay.window))
    sigmas = (check_sigmas(sigmas) if sigmas is not None else
              schedule_sigmas(sampler, base, steps, shift=shift))
    device = torch.device(device) if device is not None else torch.device("cpu")
    noise = PerSampleNoise.from_seeds(seeds)
    z = noise(torch.empty(len(seeds), c, height, width, device=device, dtype=dtype))
    x = style_aligned_noise(z, lay.window, style_alpha, noise.generators) * init_noise_scale(base, sigmas[0].item())
    return run_fused(inner, x, sigmas, cond_to(cond, device), lay, fuse, weighting, sampler, noise, vcf, seeds,
                     progress, options, view_batch)


def run_fused(inner: Any, x: torch.Tensor, sigmas: torch.Tensor, cond: Cond, lay: Any, fuse: str, weighting: Any,
              sampler: Any, noise: PerSampleNoise, vcf: bool, seeds, progress: bool, options: dict,
              view_batch: int | None = None, callback: Callable | None = None) -> torch.Tensor:
    """The one fused sampling loop from the initial state x: prediction fusion (the sampler on
    ``FusedDenoiser``) or state fusion (``sample_fused_states``), every step's prediction and fused state
    checked to be finite before the next step; shared by the panoramas and regional panoramas (2-D
    layouts, region pairs), the long videos (3-D), upscaling and ComfyUI's fusion sampler. ``sampler``:
    a windowguide sampler's name, or (state fusion) a step function ``step(denoiser, x, sigmas, cond,
    noise=, callback=)`` such as one of ComfyUI's one-step samplers. ``callback(i, x, denoised, sigma)``
    sees every step after the check."""
    prediction_check = finite_check(seeds, len(sigmas) - 1)
    state_check = finite_check(seeds, len(sigmas) - 1, what="fused state")

    def check(i, x, denoised, sigma):             # the fused state too: a fold can overflow where no prediction did
        prediction_check(i, x, denoised, sigma)
        state_check(i, x, x, sigma)
        if callback is not None:
            callback(i, x, denoised, sigma)
    if fuse == "prediction":
        x = SAMPLERS[sampler](FusedDenoiser(inner, lay, weighting, view_batch), x, sigmas, cond, noise=noise,
                              progress=progress, callback=check, **options)
    else:
        x = sample_fused_states(inner, x, sigmas, cond, lay, weighting, sampler, noise, vcf, progress,
                                callback=check, view_batch=view_batch, **options)
    return check_finite(x, seeds)


__all__ = ["MODES", "FusedDenoiser", "vcf_fuse", "WindowNoise", "adds_noise_after_update",
           "sample_fused_states", "run_fused", "check_view_batch", "per_window_nulls", "canvas_layout",
           "style_aligned_noise", "panorama", "check_fusion"]
