"""Writes the example ComfyUI workflows of windowguide's nodes in both of ComfyUI's formats: the API
format (``*_api.json``, what ``POST /prompt`` takes) and the UI format (``*.json``, what the editor
loads). Run from the project root: ``python examples/comfyui/make_workflows.py``."""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

# the widgets of each node in the order ComfyUI's editor lists them (KSampler's seed has its
# "control_after_generate" widget after it), and the node's output types
WIDGETS = {
    "CheckpointLoaderSimple": ["ckpt_name"], "CLIPTextEncode": ["text"], "EmptyLatentImage": ["width", "height", "batch_size"],
    "EmptySD3LatentImage": ["width", "height", "batch_size"],
    "KSampler": ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
    "VAEDecode": [], "SaveImage": ["filename_prefix"],
    "WindowguideSlidingWindowGuidance": ["weight", "masked", "window", "windows_per_side", "start_percent", "end_percent"],
    "WindowguideSegmentedGuidance": ["split_percent", "low", "low_weight", "window", "windows_per_side", "skip_layers"],
    "WindowguideFusionSampler": ["sampler", "mode", "window", "stride", "vcf", "eta", "style_alpha", "circular"],
    "KSamplerSelect": ["sampler_name"], "BasicScheduler": ["scheduler", "steps", "denoise"],
    "SamplerCustom": ["add_noise", "noise_seed", "control_after_generate", "cfg"],
    "LoadImage": ["image", "upload"], "ImageScaleBy": ["upscale_method", "scale_by"],
    "ControlNetLoader": ["control_net_name"], "ControlNetApplyAdvanced": ["strength", "start_percent", "end_percent"],
    "ConditioningSetArea": ["width", "height", "x", "y", "strength"], "ConditioningCombine": [],
    "WindowguideVAEEncodeTiled": ["tile_size"], "WindowguideVAEDecodeTiled": ["tile_size"],
}
OUTPUTS = {"CheckpointLoaderSimple": ["MODEL", "CLIP", "VAE"], "CLIPTextEncode": ["CONDITIONING"],
           "EmptyLatentImage": ["LATENT"], "EmptySD3LatentImage": ["LATENT"], "KSampler": ["LATENT"],
           "VAEDecode": ["IMAGE"], "SaveImage": [], "WindowguideSlidingWindowGuidance": ["MODEL"],
           "WindowguideSegmentedGuidance": ["MODEL"], "WindowguideFusionSampler": ["SAMPLER"],
           "KSamplerSelect": ["SAMPLER"], "BasicScheduler": ["SIGMAS"], "SamplerCustom": ["LATENT", "LATENT"],
           "LoadImage": ["IMAGE", "MASK"], "ImageScaleBy": ["IMAGE"], "ControlNetLoader": ["CONTROL_NET"],
           "ControlNetApplyAdvanced": ["CONDITIONING", "CONDITIONING"], "ConditioningSetArea": ["CONDITIONING"],
           "ConditioningCombine": ["CONDITIONING"], "WindowguideVAEEncodeTiled": ["LATENT"],
           "WindowguideVAEDecodeTiled": ["IMAGE"]}


def mswg_sdxl():
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse on a cliff at dusk", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "5": {"class_type": "WindowguideSlidingWindowGuidance",
              "inputs": {"model": ["1", 0], "weight": 0.5, "masked": True, "window": 0.625, "windows_per_side": 2,
                         "start_percent": 0.0, "end_percent": 1.0}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 0, "steps": 30, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "windowguide_mswg_sdxl"}},
    }


def sgg_sd3():
    """The SGG paper's SD3.5 recipe: CFG 4.5 on the first half, skip-layer guidance 3.0 on blocks 7, 8, 9 after."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd3.5_medium.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox in a snowy forest, photograph", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "5": {"class_type": "WindowguideSegmentedGuidance",
              "inputs": {"model": ["1", 0], "split_percent": 0.5, "low": "skip_layer", "low_weight": 3.0,
                         "window": 0.625, "windows_per_side": 2, "skip_layers": "7,8,9"}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 0, "steps": 28, "cfg": 4.5,
                                                   "sampler_name": "euler", "scheduler": "sgm_uniform", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "windowguide_sgg_sd3"}},
    }


def gvcf_panorama():
    """The GF + VCF paper's SD 2.0 panorama: 512 x 3584, Guided Fusion with VCF under DDPM, stride 48."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v2-1_512-ema-pruned.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of the dolomites", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 3584, "height": 512, "batch_size": 1}},
        "5": {"class_type": "WindowguideFusionSampler",
              "inputs": {"sampler": "ddpm", "mode": "gf", "window": 64, "stride": 48, "vcf": True, "eta": 0.0,
                         "style_alpha": 0.0, "circular": False}},
        "6": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 50,
                                                         "denoise": 1.0}},
        "7": {"class_type": "SamplerCustom", "inputs": {"model": ["1", 0], "add_noise": True, "noise_seed": 0, "cfg": 7.5,
                                                        "positive": ["2", 0], "negative": ["3", 0], "sampler": ["5", 0],
                                                        "sigmas": ["6", 0], "latent_image": ["4", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "windowguide_gvcf_panorama"}},
    }


def upscale(factor: int, source: int = 512):
    """Tiled img2img upscaling with SD 1.5: the image scaled by ``factor`` (lanczos), encoded by the exact
    tiled VAE, then re-denoised from 35 % noise by the fusion sampler: Guided Fusion of 64 x 64 latent
    windows (the model's 512 px) at stride 32 under DDPM with VCF, M-SWG inside each window, a tile
    ControlNet whose hint each window gets cut at its place, and a region prompt (the top third: sky) that
    reaches the windows it covers; decoded by the exact tiled VAE."""
    out = source * factor
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a detailed photograph of a harbour town, sharp "
                                                                 "focus", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, lowres, jpeg artefacts", "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "example.png", "upload": "image"}},
        "5": {"class_type": "ImageScaleBy", "inputs": {"image": ["4", 0], "upscale_method": "lanczos",
                                                       "scale_by": float(factor)}},
        "6": {"class_type": "WindowguideVAEEncodeTiled", "inputs": {"vae": ["1", 2], "pixels": ["5", 0],
                                                                    "tile_size": 512}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "clear blue sky, soft clouds", "clip": ["1", 1]}},
        "8": {"class_type": "ConditioningSetArea", "inputs": {"conditioning": ["7", 0], "width": out,
                                                              "height": out // 3 // 8 * 8, "x": 0, "y": 0,
                                                              "strength": 1.0}},
        "9": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["2", 0], "conditioning_2": ["8", 0]}},
        "10": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "control_v11f1e_sd15_tile.safetensors"}},
        "11": {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["9", 0], "negative": ["3", 0],
                                                                   "control_net": ["10", 0], "image": ["5", 0],
                                                                   "strength": 0.8, "start_percent": 0.0,
                                                                   "end_percent": 1.0}},
        "12": {"class_type": "WindowguideSlidingWindowGuidance",
               "inputs": {"model": ["1", 0], "weight": 0.5, "masked": True, "window": 0.625, "windows_per_side": 2,
                          "start_percent": 0.0, "end_percent": 1.0}},
        "13": {"class_type": "WindowguideFusionSampler",
               "inputs": {"sampler": "ddpm", "mode": "gf", "window": 64, "stride": 32, "vcf": True, "eta": 0.0,
                          "style_alpha": 0.0, "circular": False}},
        "14": {"class_type": "BasicScheduler", "inputs": {"model": ["12", 0], "scheduler": "normal", "steps": 20,
                                                          "denoise": 0.35}},
        "15": {"class_type": "SamplerCustom", "inputs": {"model": ["12", 0], "add_noise": True, "noise_seed": 0,
                                                         "cfg": 5.0, "positive": ["11", 0], "negative": ["11", 1],
                                                         "sampler": ["13", 0], "sigmas": ["14", 0],
                                                         "latent_image": ["6", 0]}},
        "16": {"class_type": "WindowguideVAEDecodeTiled", "inputs": {"vae": ["1", 2], "samples": ["15", 0],
                                                                     "tile_size": 512}},
        "17": {"class_type": "SaveImage", "inputs": {"images": ["16", 0],
                                                     "filename_prefix": f"windowguide_upscale_{factor}x"}},
    }


def ui_format(api: dict) -> dict:
    """The editor's format of an API workflow: nodes with their widget values and links between slots."""
    nodes, links = [], []
    incoming = {}
    for nid, node in api.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                links.append([len(links) + 1, int(value[0]), value[1], int(nid), name])
                incoming.setdefault(nid, []).append((name, len(links)))
    for i, (nid, node) in enumerate(api.items()):
        kind = node["class_type"]
        values = []
        for w in WIDGETS[kind]:
            values.append("fixed" if w == "control_after_generate" else node["inputs"][w])
        in_slots = [{"name": name, "type": _type_of(api, links, link), "link": link} for name, link in incoming.get(nid, [])]
        out_slots = [{"name": t, "type": t, "links": [l[0] for l in links if l[1] == int(nid) and l[2] == k]}
                     for k, t in enumerate(OUTPUTS[kind])]
        nodes.append({"id": int(nid), "type": kind, "pos": [80 + 320 * (i % 4), 80 + 260 * (i // 4)], "size": [300, 200],
                      "flags": {}, "order": i, "mode": 0, "inputs": in_slots, "outputs": out_slots,
                      "properties": {"Node name for S&R": kind}, "widgets_values": values})
    ui_links = []
    for lid, src, slot, dst, name in links:
        dst_slot = [s["name"] for s in next(n for n in nodes if n["id"] == dst)["inputs"]].index(name)
        ui_links.append([lid, src, slot, dst, dst_slot, OUTPUTS[api[str(src)]["class_type"]][slot]])
    return {"last_node_id": max(int(k) for k in api), "last_link_id": len(links), "nodes": nodes, "links": ui_links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def _type_of(api, links, link):
    src, slot = links[link - 1][1], links[link - 1][2]
    return OUTPUTS[api[str(src)]["class_type"]][slot]


WORKFLOWS = {"mswg_sdxl": mswg_sdxl, "sgg_sd3": sgg_sd3, "gvcf_panorama": gvcf_panorama,
             "upscale_2x": lambda: upscale(2), "upscale_4x": lambda: upscale(4, source=256)}
# what ComfyUI lists as the node pack's templates (its editor's format): <pack>/example_workflows/*.json
TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(HERE)), "example_workflows")

if __name__ == "__main__":
    os.makedirs(TEMPLATES, exist_ok=True)
    for name, make in WORKFLOWS.items():
        api = make()
        with open(os.path.join(HERE, f"{name}_api.json"), "w") as f:
            json.dump(api, f, indent=1)
        with open(os.path.join(HERE, f"{name}.json"), "w") as f:
            json.dump(ui_format(api), f, indent=1)
        with open(os.path.join(TEMPLATES, f"windowguide_{name}.json"), "w") as f:
            json.dump(ui_format(api), f, indent=1)
        print(f"{name}: {name}_api.json, {name}.json, example_workflows/windowguide_{name}.json")
