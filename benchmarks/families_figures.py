"""Max |ours - diffusers| per new family and direction (tiny pipelines of tests/test_families.py):
``python benchmarks/families_figures.py`` from the project root; its output is benchmarks/families_cpu.txt."""
import sys; sys.path.insert(0, "tests")
import torch, windowguide as wg
import test_families as T
rows = []
for name in sorted(T.SPECS):
    spec = T.SPECS[name]()
    pipe = spec.build()
    out = {}
    for scale in (1.0, 3.0):
        ref = T._run(spec, pipe, negative_prompt="blue dog", **{spec.scale: scale})
        out[f"sampler s={scale:g}"] = float((T._ours(spec, pipe, cfg_scale=scale) - ref).abs().max())
    args = dict(negative_prompt="blue dog", **{spec.scale: 3.0})
    for recipe in ("mswg:w=0.5", f"sgg:fsplit=0.5,cfg={spec.weight(3.0):g},mswg=0.5"):
        with wg.patch(pipe, recipe):
            patched = T._run(spec, pipe, **args)
        m = wg.from_pipeline(pipe)
        pos, neg = T._encode(spec, m)
        null = {k: v[0] for k, v in neg.items()}
        terms = T._recipe_terms(recipe, spec.shape[-2:], m.multiple, null)
        if not any(isinstance(t, wg.CFG) for t in terms):
            terms = wg.CFG(spec.weight(3.0), null=null) + terms
        with torch.no_grad():
            x = wg.sample(m.denoiser, spec.shape, [7], sampler="flow_euler", sigmas=m.sigmas(spec.steps, shape=spec.shape),
                          cond=pos, guidance=m.family_guidance(terms))
        out["patch " + recipe.split(":")[0]] = float((T._out(spec, x) - patched).abs().max())
    if spec.modular:
        import diffusers.modular_pipelines as mp
        from diffusers.guiders import ClassifierFreeGuidance
        from windowguide import guiders
        blocks = getattr(mp, spec.modular)().init_pipeline()
        blocks.update_components(**{k: v for k, v in pipe.components.items() if v is not None and k in blocks._component_specs},
                                 guider=ClassifierFreeGuidance(guidance_scale=3.0))
        cfg = T._run_modular(spec, blocks, ClassifierFreeGuidance(guidance_scale=3.0))
        zero = T._run_modular(spec, blocks, guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.0))
        outg = T._run_modular(spec, blocks, guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.5))
        window = tuple(wg.windows.default_window(s, m.multiple) for s in spec.shape[-2:])
        with torch.no_grad():
            x = wg.sample(m.denoiser, spec.shape, [7], sampler="flow_euler", sigmas=m.sigmas(spec.steps, shape=spec.shape),
                          cond=pos, guidance=m.family_guidance(wg.CFG(2.0, null=null) + wg.MSWG(0.5, window=window)))
        out["guider w0 == CFG"] = bool(torch.equal(zero, cfg))
        out["guider mswg"] = float(((spec.modular_out or spec.to_pipeline)(x) - outg).abs().max())
    rows.append((name, out))
    print(name, {k: (f"{v:.1e}" if isinstance(v, float) else v) for k, v in out.items()}, flush=True)
