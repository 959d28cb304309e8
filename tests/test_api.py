"""The public API the README sells (wg.panorama, wg.long_video, wg.upscale, wg.recipe, a SPEC string in
wg.sample), and the page's Python form of a run, executed and compared with the CLI's PNGs (#35 item 7)."""
import numpy as np
import torch

import windowguide as wg
from windowguide.files import read_png
from windowguide.models.checkpoint import load_denoiser


def test_a_spec_string_in_wg_sample_is_the_built_recipe():
    mirror, info, net = load_denoiser("mirror")
    cond = torch.tensor([0, 1])
    with torch.no_grad():
        a = wg.sample(mirror, info["shape"], [0, 1], steps=3, guidance="cfg:w=1+mswg:w=0.5,window=16", cond=cond)
        b = wg.sample(mirror, info["shape"], [0, 1], steps=3, cond=cond,
                      guidance=wg.CFG(1.0) + wg.MSWG(0.5, window=16))
    assert torch.equal(a, b)
    assert len(wg.recipe("cfg:w=1+ag:w=1", model="mirror").terms) == 2


def test_the_top_level_functions_are_the_modules():
    from windowguide.fusion import panorama
    from windowguide.regional import Region, regional_panorama
    scenes, info, net = load_denoiser("scenes")
    kw = dict(window=24, stride=8, steps=2, sampler="ddim")
    with torch.no_grad():
        assert torch.equal(wg.panorama(scenes, (3, 24, 40), [0], cond=torch.tensor([1]), **kw),
                           panorama(scenes, (3, 24, 40), [0], cond=torch.tensor([1]), **kw))
        regions = [Region(torch.tensor([1]), torch.ones(24, 40))]
        assert torch.equal(wg.panorama(scenes, (3, 24, 40), [0], regions=regions, **kw),
                           regional_panorama(scenes, (3, 24, 40), [0], regions, **kw))
        image = np.full((12, 12, 3), 128, np.uint8)
        assert wg.upscale(scenes, image, 2, 0.5, steps=2, window=24).shape == (1, 24, 24, 3)
        bounce, binfo, _ = load_denoiser("bounce")
        assert wg.long_video(bounce, (1, 16, 12, 12), [0], (12, 12, 12), steps=2).shape == (1, 1, 16, 12, 12)


def test_the_pages_python_form_runs_and_equals_the_cli(tmp_path):
    from windowguide.ui import runs
    for result in (runs.sample("mirror", "cfg:w=1+mswg:w=0.5,window=16", "0-2", 3, "heun", root=str(tmp_path)),
                   runs.panorama("scenes", 48, 8, "gf", "ddim", 3, "0-1", "mswg:w=0.3,window=16", klass="1",
                                 root=str(tmp_path))):
        code = runs.python_recipe(result)
        scope: dict = {}
        exec(compile(code, "<the page's Python>", "exec"), scope)
        assert np.array_equal(scope["images"], np.stack(result.images)), code
