"""The bounce toy's clips and metrics (windowguide.toy.bounce) against their known motion, the video model's
architecture, and bench video's structure on a tiny setting."""
import torch

from windowguide.models.video import VideoUNet
from windowguide.toy.bounce import SPEEDS, bouncing_clips, centroids, temporal_metrics


def test_centroids_recover_the_known_paths_and_speed_is_constant():
    clips, path = bouncing_clips(32, 16, 12, seed=4)
    c, peak = centroids(clips)
    assert (c - path).abs().mean() < 0.05 and bool((peak > 0.7).all())      # a centre between pixels: >= 0.73
    speed = (path[:, 1:] - path[:, :-1]).norm(dim=-1)
    steady = speed[:, 0:1].expand_as(speed)
    # away from a bounce the path moves at its drawn speed exactly (a bounce shortens that step's chord)
    frac_exact = ((speed - steady).abs() < 1e-4).float().mean()
    assert frac_exact > 0.6 and SPEEDS[0] - 1e-4 <= speed.max() <= SPEEDS[1] + 1e-4


def test_metrics_tell_real_motion_from_broken_motion():
    clips, _ = bouncing_clips(32, 24, 12, seed=5)
    real = temporal_metrics(clips)
    shuffled = temporal_metrics(clips[:, :, torch.randperm(24, generator=torch.Generator().manual_seed(0))])
    frozen = clips[:, :, :1].expand_as(clips)
    assert real["presence"] == 1.0 and shuffled["jerk"] > 5 * real["jerk"] and shuffled["speed_cv"] > real["speed_cv"]
    assert temporal_metrics(frozen)["jerk"] < 1e-4
    faded = clips.clone()
    faded[:, :, ::2] = -1                       # the blob gone on every other frame
    assert abs(temporal_metrics(faded)["presence"] - 0.5) < 1e-6


def test_video_unet_runs_on_windows_and_crops():
    net = VideoUNet(channels=1, base=8, mults=(1, 2))
    for shape in ((2, 1, 12, 12, 12), (3, 1, 8, 6, 12)):
        assert net(torch.randn(shape), torch.full((shape[0],), 0.5)).shape == shape


def test_bench_video_structure():
    from windowguide.bench import video
    s = video.Settings(sets=2, videos=2, steps=2, long_frames=24)
    real = video.real_rows(s)
    assert set(real["clip"]) == {"speed_cv", "drift", "jerk", "presence"} and real["clip"]["presence"] == (1.0, 0.0)
