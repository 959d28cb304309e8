"""The 2026 families (Chroma, Flux.2, Qwen-Image, Z-Image, SANA) in all three directions: our sampler
through ``from_pipeline`` against the pipeline's own output, ``wg.patch`` on the classic pipeline, and
the windowguide guiders in the family's modular pipeline; plus each family's crop positions."""
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import windowguide as wg
import windowguide.adapters.registry
import pipes


@dataclass
class Spec:
    """How to run one family's tiny pipeline: its latent shape for windowguide, the pipeline's form of
    those latents, the CFG argument and how it maps to our CFG weight."""
    build: Callable
    shape: tuple
    pixels: int                          # image side in pixels for the pipeline's height/width
    to_pipeline: Callable                # our latents -> the pipeline's ``latents`` argument
    from_ours: Callable = None           # our final state -> the pipeline's output_type='latent' (else to_pipeline)
    negative: bool = True                # the pipeline takes a negative prompt
    scale: str = "guidance_scale"        # the pipeline's CFG argument
    weight: Callable = lambda s: s - 1   # our CFG weight for the pipeline's scale
    call: dict = None                    # other arguments of the pipeline's call
    sampler: str = "flow_euler"
    steps: int = 3
    output_layer: str = "proj_out"       # the network's last layer: one call of it per evaluation


def _chroma():
    from windowguide.adapters.flux import pack
    return Spec(pipes.tiny_chroma, (4, 16, 16), 32, pack, call=dict(max_sequence_length=6))


def _klein():
    from windowguide.adapters.flux2 import latents_to_vae
    pipe = pipes.tiny_flux2(klein=True)
    return Spec(lambda: pipe, (16, 8, 8), 32, lambda z: z, lambda x: latents_to_vae(pipe.vae, x), negative=False,
                call=dict(max_sequence_length=12))


SPECS = {"chroma": _chroma, "flux2-klein": _klein}


@pytest.fixture(scope="module", params=sorted(SPECS))
def family(request):
    spec = SPECS[request.param]()
    return request.param, spec, spec.build()


def _latents(shape, seed=7):
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))


def _run(spec, pipe, **kw):
    if not spec.negative:
        kw.pop("negative_prompt", None)
    with torch.no_grad():
        return pipe(prompt="a red cat", height=spec.pixels, width=spec.pixels, num_inference_steps=spec.steps,
                    latents=spec.to_pipeline(_latents(spec.shape)), output_type="latent", **(spec.call or {}),
                    **kw).images


def _encode(spec, m):
    return m.encode(prompt="a red cat", negative_prompt="blue dog" if spec.negative else "",
                    **{k: v for k, v in (spec.call or {}).items() if k == "max_sequence_length"})


def _out(spec, x):
    return (spec.from_ours or spec.to_pipeline)(x)


def _ours(spec, pipe, guidance=None, cfg_scale=None):
    m = wg.from_pipeline(pipe)
    pos, neg = _encode(spec, m)
    g = guidance
    if cfg_scale is not None and spec.weight(cfg_scale) > 0:
        cfg = wg.CFG(spec.weight(cfg_scale), null={k: v[0] for k, v in neg.items()} if isinstance(neg, dict) else neg[0])
        g = cfg if g is None else cfg + g
    with torch.no_grad():
        x = wg.sample(m.denoiser, spec.shape, [7], sampler=spec.sampler, sigmas=m.sigmas(spec.steps, shape=spec.shape),
                      cond=pos, guidance=g)
    return _out(spec, x)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_our_sampler_equals_the_pipeline(family, scale):
    name, spec, pipe = family
    ref = _run(spec, pipe, negative_prompt="blue dog", **{spec.scale: scale})
    assert (_ours(spec, pipe, cfg_scale=scale) - ref).abs().max() <= 1e-4


def _untouched(net):
    return "forward" not in vars(net) and not getattr(getattr(net, "_diffusers_hook", None), "hooks", None)


def _recipe_terms(recipe, shape, multiple, null):
    """The recipe as our sampler's Guidance: open windows fitted, the CFG term's null the negative prompt."""
    from dataclasses import replace
    from windowguide import spec as recipes
    from windowguide.integrations.calls import fit_windows, open_windows
    terms = fit_windows(recipes.build(open_windows(recipe), recipes.Context(net=None, load=None)), shape, multiple)
    return wg.Guidance(tuple(replace(t, null=null) if isinstance(t, wg.CFG) else t for t in terms))


@pytest.mark.parametrize("recipe", ["mswg:w=0.5", "sgg:fsplit=0.5,cfg=2,mswg=0.5"])
def test_patch_weight_zero_bit_for_bit_and_guided_equals_our_sampler(family, recipe):
    name, spec, pipe = family
    args = dict(negative_prompt="blue dog", **{spec.scale: 3.0})
    before = _run(spec, pipe, **args)
    with wg.patch(pipe, "mswg:w=0"):
        zero = _run(spec, pipe, **args)
    with wg.patch(pipe, recipe):
        patched = _run(spec, pipe, **args)
    assert torch.equal(zero, before) and torch.equal(_run(spec, pipe, **args), before) and _untouched(pipe.transformer)
    assert not torch.equal(patched, before)
    m = wg.from_pipeline(pipe)
    pos, neg = _encode(spec, m)
    null = {k: v[0] for k, v in neg.items()} if isinstance(neg, dict) else neg[0]
    terms = _recipe_terms(recipe, spec.shape[-2:], m.multiple, null)
    if not any(isinstance(t, wg.CFG) for t in terms):
        terms = wg.CFG(spec.weight(3.0), null=null) + terms
    with torch.no_grad():
        x = wg.sample(m.denoiser, spec.shape, [7], sampler=spec.sampler, sigmas=m.sigmas(spec.steps, shape=spec.shape),
                      cond=pos, guidance=terms)
    assert (_out(spec, x) - patched).abs().max() <= 1e-4


def _full_calls(pipe, run, spec):
    """The token shapes of the transformer's evaluations during ``run()``, seen at its output layer
    (a call that a hook answers without running the network does not reach it)."""
    seen = []
    hook = pipe.transformer.get_submodule(spec.output_layer).register_forward_pre_hook(
        lambda mod, args: seen.append(tuple(args[0].shape[:-1])))
    try:
        run()
    finally:
        hook.remove()
    return seen


def test_sgg_under_the_patch_skips_the_unconditional_call_where_cfg_is_off(family):
    """FLUX-like pipelines run CFG as a second call: where sgg's CFG is off it is not evaluated."""
    name, spec, pipe = family
    if wg.adapters.registry.by_pipeline(pipe, patched=True).patched[type(pipe).__name__].rows != "separate":
        pytest.skip("CFG in one batch: the unconditional rows are evaluated with the conditional ones")
    args = dict(negative_prompt="blue dog", **{spec.scale: 3.0})
    plain = _full_calls(pipe, lambda: _run(spec, pipe, **args), spec)
    with wg.patch(pipe, "sgg:fsplit=0.5,cfg=2,mswg=0.5"):
        calls = _full_calls(pipe, lambda: _run(spec, pipe, **args), spec)
    full = plain[0]
    high = int(0.5 * spec.steps)                       # CFG on steps 0 .. high - 1
    assert len(plain) == 2 * spec.steps
    assert sum(c == full for c in calls) == 2 * high + (spec.steps - high)


def test_sgg_under_the_patch_of_a_batched_cfg_pipeline(tmp_path):
    """SD runs CFG in one batch: where sgg's CFG is off the unconditional rows get the conditional
    prediction, so that the pipeline's combination is the conditional one plus the low term."""
    pipe = pipes.tiny_sd(tmp_path)
    z = _latents((4, 16, 16))

    def run():
        with torch.no_grad():
            return pipe("a red cat", negative_prompt="blue dog", guidance_scale=3.0, height=32, width=32,
                        num_inference_steps=4, latents=z, output_type="latent").images
    with wg.patch(pipe, "sgg:fsplit=0.5,cfg=2,mswg=0.5,window=10"):
        patched = run()
    m = wg.from_pipeline(pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog")
    terms = _recipe_terms("sgg:fsplit=0.5,cfg=2,mswg=0.5,window=10", (16, 16), m.multiple, neg[0])
    pipe.scheduler.set_timesteps(4)
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="ddim", sigmas=m.sigmas(4, sampler="ddim"), cond=pos,
                      guidance=terms, **m.sampler_options("ddim", 4))
    assert (m.pipeline_latents(x, m.sigmas(4, sampler="ddim")) - patched).abs().max() <= 1e-4
