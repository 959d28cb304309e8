"""Every preset runs and makes the network evaluations it should, counted on tiny models."""
import sys

import pytest
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from windowguide import spec  # noqa: E402
from windowguide.generate import sample  # noqa: E402
from windowguide.presets import PRESETS, expand  # noqa: E402


class Counter:
    """Counts a module's calls and the samples it saw, per call input size."""

    def __init__(self, module):
        self.calls, self.samples = [], 0
        module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        self.calls.append(tuple(x.shape[-2:]))
        self.samples += x.shape[0]


def _sd3(layers=10):
    from diffusers import SD3Transformer2DModel
    from windowguide.denoiser import FlowDenoiser
    torch.manual_seed(0)
    tr = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=layers,
                               attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                               caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=32).eval()

    def model(x, t, cond, skip_layers=None):
        return tr(hidden_states=x, timestep=t, encoder_hidden_states=cond["embeds"], pooled_projections=cond["pooled"],
                  skip_layers=skip_layers).sample

    den = FlowDenoiser(model, time_scale=1000, multiple=2,
                       null_cond=dict(embeds=torch.zeros(4, 16), pooled=torch.zeros(16)))
    skip = lambda blocks: (lambda x, s, c: FlowDenoiser(lambda a, t, cc: model(a, t, cc, [int(b) for b in blocks]),
                                                        time_scale=1000)(x, s, c))
    cond = dict(embeds=torch.randn(1, 4, 16), pooled=torch.randn(1, 16))
    return tr, den, skip, cond


@pytest.mark.parametrize("name, evals_per_sample", [
    ("sd35-sgg", 2 * 28),                      # CFG (2) on steps 0-13, pos + skip-layer (2) on 14-27
    ("sd35-slg", 2 * 28 + 5),                  # CFG every step, the skip-layer pass on steps 1-5
])
def test_sd3_presets_count_their_evaluations(name, evals_per_sample):
    tr, den, skip, cond = _sd3()
    p = expand(name)
    g = spec.build(p.guidance, spec.Context(net=None, load=None, skip=skip))
    counter = Counter(tr)
    with torch.no_grad():
        sample(den, (4, 32, 32), [0], steps=p.steps, sampler=p.sampler, guidance=g, cond=cond)
    assert counter.samples == evals_per_sample
    if name == "sd35-sgg":
        assert len(counter.calls) == 2 * 28 - 14           # CFG steps batch cond + null in one call


@pytest.mark.parametrize("name", ["dit-xl-2-mswg-fid", "dit-xl-2-mswg-fd-dinov2", "dit-xl-2-cfg-mswg"])
def test_dit_presets_make_one_call_per_spatial_size_per_step(name):
    assert expand(name).crop_positions == "stretch"           # the M-SWG authors' resized embedding
    from diffusers import DiTTransformer2DModel
    from windowguide.denoiser import EpsDenoiser, VPSchedule
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=1, sample_size=32, patch_size=2, num_embeds_ada_norm=10).eval()
    den = EpsDenoiser(lambda x, t, y: dit(x, timestep=t, class_labels=y).sample[:, :4], VPSchedule.linear(),
                      multiple=2, null_cond=torch.tensor(10))
    p = expand(name)
    g = spec.build(p.guidance, spec.Context(net=None, load=None))
    counter = Counter(dit)
    steps = 3                                  # the preset's 250 DDPM steps, shortened for the count
    with torch.no_grad():
        # dit_ddpm (learned variance) makes the evaluations of plain DDPM; counted with it here
        sample(den, (4, 32, 32), [0, 1], steps=steps, sampler="ddpm" if p.sampler == "dit_ddpm" else p.sampler,
               guidance=g, cond=torch.tensor([1, 2]))
    assert counter.calls == [(32, 32), (20, 20)] * steps    # full size (cond [+ null]) and all crops, one call each
    per_step = (2 if "cfg" in name else 1) + 4                # 2 x 2 windows of 20 on the 32 x 32 latent
    assert counter.samples == 2 * per_step * steps


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("edm2")])
def test_edm2_presets_run_on_a_small_edm2_at_64(name, tmp_path):
    from windowguide.models.edm2 import EDM2Precond
    torch.manual_seed(0)
    net = EDM2Precond(64, 4, 10, model_channels=8, channels_per_head=8).eval()
    den = net.denoiser()
    p = expand(name, weak="xs" if PRESETS[name].needs_weak else None)
    uncond = EDM2Precond(64, 4, 0, model_channels=8, channels_per_head=8).eval()     # EDM2's unconditional XS
    g = spec.build(p.guidance, spec.Context(net=net, load=lambda _: net.denoiser(),
                                            load_unconditional=lambda _: uncond.denoiser()))
    counter, uncond_counter = Counter(net.unet), Counter(uncond.unet)
    with torch.no_grad():
        x = sample(den, (4, 64, 64), [0], steps=3, sampler=p.sampler, guidance=g, cond=torch.tensor([3]))
    assert torch.isfinite(x).all() and p.steps == 32 and p.sampler == "heun"
    evals = 3 + 2                              # Heun: 2 evaluations per step, 1 on the last
    if "mswg" in name:
        assert (40, 40) in counter.calls
    if name == "edm2-s-mswg-fid":
        assert counter.samples == evals * (1 + 4)
    if "cfg" in name:                          # CFG's negative is the unconditional network, never a null label
        assert counter.samples == evals and 0 < uncond_counter.samples <= evals
        if name == "edm2-xxl-cfg-fid":         # on at every sigma: one unconditional evaluation each
            assert uncond_counter.samples == evals


def test_gvcf_panorama_preset_makes_two_evaluations_per_window_per_step():
    from windowguide.denoiser import EpsDenoiser, VPSchedule
    from windowguide.fusion import panorama
    from windowguide.windows import layout
    seen = []

    def model(x, t, cond):
        seen.append(x.shape[0])
        return torch.zeros_like(x) + 0.01 * cond.view(-1, 1, 1, 1).float()

    p = expand("gvcf-sd2-panorama")
    den = EpsDenoiser(model, VPSchedule.linear(), null_cond=torch.tensor(0))
    g = spec.build(p.guidance, spec.Context(net=None, load=None))
    canvas, window, stride, steps = (4, 8, 40), 8, 8, 3            # the preset's shape, shrunk
    with torch.no_grad():
        panorama(den, canvas, [0], window=window, stride=stride, mode=p.panorama["mode"], sampler=p.sampler,
                 steps=steps, vcf=p.panorama["vcf"], guidance=g, cond=torch.tensor([1]))
    windows = layout(8, 40, window, stride=stride).n
    assert sum(seen) == 2 * windows * steps
