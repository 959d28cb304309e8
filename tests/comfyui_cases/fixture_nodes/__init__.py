"""Test fixtures for the end-to-end ComfyUI test (not part of windowguide): a tiny model from a saved
state dict, conditioning from a seed, and a latent-to-image stand-in for a VAE, since no real checkpoint
can be downloaded or built small enough for ComfyUI's model detection."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_models  # noqa: E402


class WGFixtureModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": ("STRING", {"default": ""})}}
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, path):
        import safetensors.torch
        return (tiny_models.tiny_sd15(state=safetensors.torch.load_file(path)),)


class WGFixtureConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 1})}}
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed):
        return (tiny_models.conditioning(seed),)


class WGFixtureLatentToImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "convert"
    CATEGORY = "testing"

    def convert(self, samples):
        return (tiny_models.latent_to_image(samples["samples"]),)


NODE_CLASS_MAPPINGS = {"WGFixtureModel": WGFixtureModel, "WGFixtureConditioning": WGFixtureConditioning,
                       "WGFixtureLatentToImage": WGFixtureLatentToImage}
