"""The Gradio page of ``windowguide ui``: Compare (up to four recipes on the same seeds), Sweep (one method
over weights, with the figures plotted against w) and Panorama (window fusion, the window grid on request).
Every result is the CLI's (``runs``), shown with its command line, its Python recipe and a zip of its PNGs
and settings. Runs show the sampler's progress, can be stopped, and queue one at a time, each in a folder
of its own, so two browser tabs never mix results; a refused input shows the CLI's message."""
from __future__ import annotations

import os
import tempfile
from typing import Any

from ..errors import WindowguideError
from . import figures, runs
from .recipes import METHODS, recipe

SAMPLERS = ("heun", "euler", "ddim", "ddpm")
RECIPES = 4


def bundled_models() -> list[str]:
    """The bundled image diffusion models (not the classifiers, not the video model), mirror first."""
    from ..models.checkpoint import bundled_names, read_info
    names = [n for n in bundled_names() if not n.endswith("-classifier") and read_info(n)["kind"] != "video"]
    return sorted(names, key=lambda n: (not n.startswith("mirror"), n))


def bundled_presets() -> list[str]:
    """Presets made for the bundled models (the others need their checkpoints)."""
    from ..presets import PRESETS
    return [k for k, p in PRESETS.items() if "(bundled)" in p.model]


def recipe_of(preset: str, method: str, weight, window, n, first, last, split, cfg) -> str:
    """A column's SPEC: the preset's when one is chosen, else the controls' (``recipes.recipe``)."""
    if preset:
        from ..presets import expand
        return expand(preset).guidance
    return recipe(method, float(weight or 0), _int(window), _int(n), _int(first), _int(last), _float(split),
                  _float(cfg))


def _float(v):
    """An optional number from a page field."""
    if v in (None, ""):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise WindowguideError(f"{v!r}: accepted: a number, or empty") from None


def _int(v):
    """An optional whole number from a page field ('' or None: not given)."""
    if v in (None, ""):
        return None
    try:
        return int(float(v))
    except (TypeError, ValueError):
        raise WindowguideError(f"{v!r}: accepted: a whole number, or empty") from None


def compare(model: str, klass: str, prompt: str, seeds: str, steps: int, sampler: str, columns: list[tuple],
            root: str | None = None) -> dict:
    """Every enabled column's images on the same seeds (the CLI's), with its figures and command; the M-SWG
    mask drawn over the first image of the first column with crops."""
    results, labels, texts, overlay = [], [], [], None
    for enabled, *controls in columns:
        if not enabled:
            results.append(None)
            continue
        spec = recipe_of(*controls)
        r = runs.sample(model, spec, seeds, steps, sampler, klass or None, prompt or None, root)
        results.append(r)
        labels.append(spec)
        texts.append(f"**{spec}**  \n{figures.format_figures(figures.column_figures(r.images, model))}")
        latent = tuple(r.settings.get("shape", r.images[0].shape[:2]))[-2:]
        if overlay is None and figures.crops_of_spec(spec, *latent) is not None:
            overlay = figures.mask_overlay(r.images[0], spec, latent)
    done = [r for r in results if r is not None]
    if not done:
        raise WindowguideError("no recipe is enabled: tick at least one column")
    return dict(results=results, texts=texts, overlay=overlay, commands=_commands(done, labels),
                zip=runs.bundle(done, labels, root))


def sweep(model: str, klass: str, prompt: str, seeds: str, steps: int, sampler: str, method: str, weights: str,
          window, n, root: str | None = None) -> dict:
    """One method over a list of weights: the images (first seed of each w, in a row) and a plot of the
    figures against w."""
    try:
        ws = [float(v) for v in str(weights).replace(" ", "").split(",") if v]
    except ValueError:
        raise WindowguideError(f"weights {weights!r}: accepted: numbers separated by commas, e.g. 0,0.5,1,2") from None
    if not ws or len(ws) > 12:
        raise WindowguideError(f"weights {weights!r}: accepted: 1 to 12 numbers separated by commas")
    results, rows, labels = [], [], []
    for w in ws:
        spec = recipe(method, w, _int(window), _int(n))
        r = runs.sample(model, spec, seeds, steps, sampler, klass or None, prompt or None, root)
        results.append(r)
        labels.append(spec)
        rows.append(figures.column_figures(r.images, model))
    folder = tempfile.mkdtemp(prefix="wg-ui-plot-", dir=root)
    plot = figures.sweep_plot(ws, rows, os.path.join(folder, "sweep.png"), method)
    return dict(results=results, weights=ws, rows=rows, plot=plot, commands=_commands(results, labels),
                zip=runs.bundle(results, labels, root))


def panorama(model: str, klass: str, prompt: str, seeds: str, steps: int, sampler: str, width: int, stride: int,
             mode: str, vcf: bool, style_alpha: float, circular: bool, guidance: str, grid: bool,
             root: str | None = None) -> dict:
    """Panoramas (the CLI's), their seam figure, and the window grid drawn over them on request."""
    r = runs.panorama(model, width, stride, mode, sampler, steps, seeds, guidance or "none", vcf, style_alpha,
                      circular, klass or None, prompt or None, root)
    # the windows are in the model's (latent) pixels: drawn and scored at the image's scale
    f = max(1, r.images[0].shape[0] // r.settings.get("canvas", [0, r.images[0].shape[0]])[1])
    window = r.settings.get("window", [r.images[0].shape[0]])[-1] * f
    shown = [figures.window_grid(im, window, stride * f) if grid else im for im in r.images]
    text = figures.format_figures(figures.column_figures(r.images, model, window, stride * f))
    return dict(results=[r], shown=shown, text=text, commands=_commands([r], [guidance or "none"]),
                zip=runs.bundle([r], [guidance or "none"], root))


def _commands(results, labels) -> str:
    parts = [f"# {spec}\n{r.command}\n\n# Python\n{runs.python_recipe(r)}" for r, spec in zip(results, labels)]
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------------------- the page

def build(models: list[str] | None = None, root: str | None = None):
    """The gr.Blocks app over ``models`` (default the bundled ones; any --model the CLI accepts)."""
    import gradio as gr
    models = list(models or bundled_models())
    presets = [""] + bundled_presets()

    def guarded(fn):
        def call(*args, progress=gr.Progress()):
            if args[0] not in models:             # the page offers its models only, whatever a client sends
                raise gr.Error(f"model {str(args[0])[:80]!r} is not offered here; accepted: {', '.join(models)} "
                               f"(start the page with --model DIR to add one)", print_exception=False)
            try:
                with runs.reporting(lambda fraction, what: progress(fraction, desc=what or None)):
                    return fn(*args)
            except WindowguideError as e:
                raise gr.Error(str(e).splitlines()[0], print_exception=False) from None
        return call

    def common(tab: str):
        with gr.Row():
            model = gr.Dropdown(models, value=models[0], label="model", allow_custom_value=False,
                                elem_id=f"{tab}-model")
            klass = gr.Textbox("", label="class (index, all, none; empty: the model's default)",
                               elem_id=f"{tab}-class")
            prompt = gr.Textbox("", label="prompt (pipeline folders)", elem_id=f"{tab}-prompt")
        with gr.Row():
            seeds = gr.Textbox("0-3", label="seeds", elem_id=f"{tab}-seeds")
            steps = gr.Number(16, precision=0, label="steps", elem_id=f"{tab}-steps")
            sampler = gr.Dropdown(list(SAMPLERS), value="heun", label="sampler", elem_id=f"{tab}-sampler")
        return [model, klass, prompt, seeds, steps, sampler]

    with gr.Blocks(title="windowguide", analytics_enabled=False) as app:
        gr.Markdown("# windowguide\nSliding-window guidance, weak-to-strong guidance and window fusion on the "
                    "bundled models (or any model folder given to `windowguide ui --model`). Every result is "
                    "the CLI's; its command is under the images.")
        with gr.Tab("Compare"):
            inputs = common("compare")
            columns = []
            with gr.Row():
                for i in range(RECIPES):
                    with gr.Column(min_width=160):
                        on = gr.Checkbox(i < 2, label=f"recipe {i + 1}")
                        preset = gr.Dropdown(presets, value="", label="preset (empty: the controls below)")
                        method = gr.Dropdown(list(METHODS), value=("none", "mswg", "cfg", "cfg+mswg")[i],
                                             label="method")
                        # the demo's weights (commands/demo.py: M-SWG 0.8, CFG 1; its preset mirror-mswg-banded
                        # also limits M-SWG to steps 0-5, in the preset box)
                        weight = gr.Number((0.0, 0.8, 1.0, 0.8)[i], label="weight w", elem_id=f"compare-w-{i}")
                        window = gr.Number(16, precision=0, label="window (crops)", elem_id=f"compare-window-{i}")
                        n = gr.Number(2, precision=0, label="windows per side")
                        with gr.Accordion("interval, split, CFG weight", open=False):
                            first = gr.Textbox("", label="first step (empty: from the start)")
                            last = gr.Textbox("", label="last step (empty: to the end)")
                            split = gr.Textbox("", label="sgg split (sigma)")
                            cfg = gr.Textbox("", label="CFG weight (cfg+mswg, sgg; empty: 1)")
                        columns.append([on, preset, method, weight, window, n, first, last, split, cfg])
            with gr.Row():
                run = gr.Button("Run", variant="primary", elem_id="compare-run")
                stop = gr.Button("Stop", elem_id="compare-stop")
            galleries, notes = [], []
            with gr.Row():
                for i in range(RECIPES):
                    with gr.Column(min_width=160):
                        galleries.append(gr.Gallery(label=f"recipe {i + 1}", columns=2, elem_id=f"compare-out-{i}",
                                                    format="png", object_fit="contain"))
                        notes.append(gr.Markdown(elem_id=f"compare-figures-{i}"))
            overlay = gr.Image(label="M-SWG crops (outlined) and mask (tinted) over the first image", format="png")
            commands = gr.Code(label="reproduce", language="shell", elem_id="compare-command")
            download = gr.File(label="PNGs + settings.json")

            def on_compare(*values):
                head, rest = values[:6], values[6:]
                cols = [tuple(rest[i * 10:(i + 1) * 10]) for i in range(RECIPES)]
                out = compare(*head, cols, root=root)
                shown, texts = [], iter(out["texts"])
                for r in out["results"]:
                    shown.append([] if r is None else [(im, f"seed {s}") for s, im in zip(r.seeds, r.images)])
                words = [next(texts) if r is not None else "" for r in out["results"]]
                return (*shown, *words, out["overlay"], out["commands"], out["zip"])

            event = run.click(guarded(on_compare), inputs + sum(columns, []),
                              galleries + notes + [overlay, commands, download])
            stop.click(runs.stop, None, None, cancels=[event])

        with gr.Tab("Sweep"):
            inputs_s = common("sweep")
            with gr.Row():
                method_s = gr.Dropdown([m for m in METHODS if m not in ("none", "sgg")], value="mswg", label="method")
                weights_s = gr.Textbox("0,0.5,1,2", label="weights w (comma-separated)", elem_id="sweep-weights")
                window_s = gr.Number(16, precision=0, label="window (crops)")
                n_s = gr.Number(2, precision=0, label="windows per side")
            with gr.Row():
                run_s = gr.Button("Run sweep", variant="primary", elem_id="sweep-run")
                stop_s = gr.Button("Stop", elem_id="sweep-stop")
            gallery_s = gr.Gallery(label="first seed at each w", columns=6, elem_id="sweep-out", format="png", object_fit="contain")
            plot_s = gr.Image(label="figures against w", format="png")
            commands_s = gr.Code(label="reproduce", language="shell")
            download_s = gr.File(label="PNGs + settings.json")

            def on_sweep(*values):
                out = sweep(*values, root=root)
                shown = [(r.images[0], f"w={w:g}") for w, r in zip(out["weights"], out["results"])]
                return shown, out["plot"], out["commands"], out["zip"]

            event_s = run_s.click(guarded(on_sweep), inputs_s + [method_s, weights_s, window_s, n_s],
                                  [gallery_s, plot_s, commands_s, download_s])
            stop_s.click(runs.stop, None, None, cancels=[event_s])

        with gr.Tab("Panorama"):
            inputs_p = common("panorama")
            inputs_p[0].value = "scenes" if "scenes" in models else models[0]
            inputs_p[5].value = "ddim"
            with gr.Row():
                width_p = gr.Number(96, precision=0, label="width (pixels)")
                stride_p = gr.Number(8, precision=0, label="stride")
                mode_p = gr.Dropdown(["multidiffusion", "gf", "gaussian"], value="gf", label="fusion mode")
                guidance_p = gr.Textbox("none", label="guidance SPEC in every window")
            with gr.Row():
                vcf_p = gr.Checkbox(False, label="VCF (ddpm)")
                alpha_p = gr.Slider(0, 1, 0, step=0.05, label="style alignment alpha")
                circular_p = gr.Checkbox(False, label="circular")
                grid_p = gr.Checkbox(True, label="draw the window grid")
            with gr.Row():
                run_p = gr.Button("Run panorama", variant="primary", elem_id="panorama-run")
                stop_p = gr.Button("Stop", elem_id="panorama-stop")
            gallery_p = gr.Gallery(label="panoramas", columns=1, elem_id="panorama-out", format="png",
                                   object_fit="contain", height="auto")
            note_p = gr.Markdown()
            commands_p = gr.Code(label="reproduce", language="shell")
            download_p = gr.File(label="PNGs + settings.json")

            def on_panorama(*values):
                out = panorama(*values, root=root)
                r = out["results"][0]
                return ([(im, f"seed {s}") for s, im in zip(r.seeds, out["shown"])], out["text"], out["commands"],
                        out["zip"])

            event_p = run_p.click(guarded(on_panorama), inputs_p + [width_p, stride_p, mode_p, vcf_p, alpha_p,
                                                                    circular_p, guidance_p, grid_p],
                                  [gallery_p, note_p, commands_p, download_p])
            stop_p.click(runs.stop, None, None, cancels=[event_p])
    app.queue(default_concurrency_limit=1)
    return app


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, models: list[str] | None = None,
           root: str | None = None, block: bool = True) -> Any:
    """Start the page (bound to ``host``; ``share`` opens Gradio's public link, never by default)."""
    app = build(models, root)
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, show_error=True,
               allowed_paths=[root] if root else None, max_file_size=1)   # the page takes no uploads
    return app


__all__ = ["build", "launch", "compare", "sweep", "panorama", "recipe_of", "bundled_models", "bundled_presets"]
