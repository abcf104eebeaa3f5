r"""The interactive page: in-context segmentation in a browser (Gradio).

    python main.py --mode serve --checkpoint ckpt/segic      # then open http://127.0.0.1:7860
    python main.py --mode serve --checkpoint ckpt/segic --host 0.0.0.0 --port 8080
    python main.py --mode serve                              # the demo model of the README's set-up command

Upload up to three reference images, paint over what to find in each (the editor under the upload shows
a copy to paint on; it draws with WebGL, so where the browser has none, upload the mask), optionally
name its class, upload one or more targets and press Segment. Each target comes back with its masks
tinted over it, the propagated mask of each concept as a heatmap with its point prompt, and the binary
masks as PNG files to download: the predict command's pictures (`visualize.prediction_pictures`), made
from the same context (`predictor.concept_stacks`: references with the same class name are shots of one
concept; without names each reference is its own concept).

The references are encoded once: the context is cached under a hash of the reference images, masks
and names, so changing only the targets decodes them against the cached context (the page and the
log say "context reused"). Without --checkpoint the page serves the demo export that the README's
first set-up command trains into /tmp/segic_demo (random-weight encoders, a head trained on synthetic
shapes: it segments shapes like those of "Load a synthetic example", not photos).

Each upload may be up to 50 MB (`serve(max_upload_mb=...)`; the server cuts a larger one off as it
arrives) and every image is measured from its header before it is decoded (data/images.py's pixel
budget): Gradio's own image components, which decode what they receive, never see an upload. A file
that cannot be used (not an image, empty, too large, a mask of another size) is said in the page in
one line naming it, without a traceback in the server's log: a reference image or mask as soon as it
is uploaded (an uploaded mask is shown over its image), any file when Segment is pressed. What the
page and Gradio write goes to one temporary folder of the run, removed when the server stops cleanly
(Ctrl-C, SIGTERM).

Gradio is imported only when the page is built: reading uploads, the context cache and the pictures
are plain Python (`Session`, `read_inputs`), and model or inference code never imports Gradio. The page
runs with Gradio's analytics off and fetches nothing from the internet; --share (a public link through
Gradio's servers) is off unless asked for.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import unicodedata
from typing import NamedTuple, Sequence

import numpy as np

from segic_jax import atomic_files, visualize
from segic_jax.data import images
from segic_jax.data.images import load_image, load_mask
from segic_jax.inference.predictor import Context, Predictor, concept_stacks

MAX_REFERENCES = 3
DEMO_WORKDIR = "/tmp/segic_demo"  # where the README's set-up command trains the demo
DEMO_EXPORT = os.path.join(DEMO_WORKDIR, "export")
DEMO_COMMAND = f"python main.py --config configs/segic.py --workdir {DEMO_WORKDIR}"
DEFAULT_PORT = 7860
KEPT_RUNS = 16  # output folders of earlier presses kept for their download links
SLOT = 4  # the page's values per reference slot: image file, painting, mask file, class name
PREVIEW_SIDE = 512  # the longer side of the uploaded mask's preview
DEFAULT_MAX_UPLOAD_MB = 50  # the largest file the page accepts, each
# the pictures' captions (target file name, class) wrap rather than end in "..."
PAGE_CSS = ("#overlays .caption-label, #propagated .caption-label "
            "{white-space: normal; overflow-wrap: anywhere; text-overflow: clip; max-width: 95%}")
GRADIO_TEMP_VARIABLE = "GRADIO_TEMP_DIR"  # where Gradio keeps uploads and the pictures it serves


class Reference(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool, not empty
    name: str  # class name, "" for none


class Target(NamedTuple):
    stem: str  # file name without suffix, unique within a press
    image: np.ndarray  # (H, W, 3) uint8


class Result(NamedTuple):
    status: str  # one line: whether the context was encoded or reused, and the times
    overlays: list  # [(picture (H, W, 3), caption)] per target
    propagated: list  # [(picture (H, W, 3), caption)] per target and concept
    mask_files: list  # [path] STEM_mask{j}.png, 0/255 at the target's size


# --- reading what the page sends ----------------------------------------------------------


def _named_errors(load, path: str, *args, what: str = ""):
    """`load(path, *args)` with the upload's temporary folder cut from any message (the user knows
    the file by its name), the message led by `what` ("reference 1: ") where given. An empty (0-byte)
    file, as a failed or cancelled upload leaves, is said to be one."""
    name = os.path.basename(path)
    try:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise ValueError(f"{name} is an empty file (0 bytes): upload it again")
        return load(path, *args)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(what + str(e).replace(path, name)) from None


def _painting(editor, image_hw: tuple[int, int], index: int) -> np.ndarray:
    """The painted mask of an ImageEditor value ({"background", "layers", "composite"}; its layers
    RGBA numpy arrays): alpha > 127 in any layer, checked against the reference image's size. The
    editor shows the uploaded reference image (the page copies it there), so a painting of another
    size was made on an earlier image or on the empty canvas."""
    painted = np.zeros(image_hw, bool)
    for layer in _brush_layers(editor):
        if layer.shape[:2] != tuple(image_hw):
            raise ValueError(f"reference {index}: the painting is {layer.shape[1]}x{layer.shape[0]} but the image is "
                             f"{image_hw[1]}x{image_hw[0]}; paint again over the image shown in the editor")
        painted |= layer[..., 3] > 127
    return painted


def _brush_layers(editor) -> list[np.ndarray]:
    """The editor's layers with any paint in them (an untouched layer has the canvas's size, whatever it is)."""
    layers = (np.asarray(x) for x in (editor or {}).get("layers") or [])
    return [layer for layer in layers if layer.ndim == 3 and layer.shape[-1] == 4 and (layer[..., 3] > 127).any()]


def class_name(index: int, name: str | None) -> tuple[str, str | None]:
    """A reference's class name as typed -> (the name on one line, a note if it was changed). Line
    breaks and tabs (a pasted name, or one sent through the API) become single spaces, as the
    predict command's --class_name is one line; other control characters are refused."""
    typed = (name or "").strip()
    one_line = " ".join(typed.split())
    bad = sorted({c for c in one_line if unicodedata.category(c) == "Cc"})
    if bad:
        raise ValueError(f"reference {index}: the class name {one_line!r} contains the control character"
                         f"{'s' * (len(bad) > 1)} {', '.join(repr(c) for c in bad)}; type the name again")
    note = None
    if one_line != typed:
        note = f"reference {index}: the class name is used on one line, as {one_line!r} (line breaks and tabs become spaces)"
    return one_line, note


def read_reference(index: int, image_file: str | None, editor, mask_file: str | None,
                   name: str | None) -> tuple[Reference | None, list[str]]:
    """One reference slot of the page (1-based `index`): the uploaded image file, the painting over
    it, an uploaded mask file and a class name -> the reference (None for an unused slot) and notes
    for the user. An uploaded mask file wins over the painting."""
    name, name_note = class_name(index, name)
    notes = [name_note] if name_note else []
    what = f"reference {index}: "
    if not image_file:
        if mask_file or name or _brush_layers(editor):
            raise ValueError(f"{what}upload the reference image (its painting, mask or name has no image)")
        return None, []
    image = _named_errors(load_image, image_file, what=what)
    painted = _painting(editor, image.shape[:2], index)
    if mask_file:
        mask = _named_errors(load_mask, mask_file, image.shape[:2], f"reference {index}", what=what)
        if painted.any():
            notes.append(f"{what}the uploaded mask {os.path.basename(mask_file)} is used, the painting is not")
    elif painted.any():
        mask = painted
    else:
        raise ValueError(f"reference {index} has no mask: paint over the object in the editor or upload a mask image")
    return Reference(image, mask, name), notes


def read_targets(paths: Sequence[str] | None) -> list[Target]:
    """Uploaded target files -> targets with unique stems (a repeated file name gets -2, -3, ...)."""
    if not paths:
        raise ValueError("no target: upload at least one target image to segment")
    targets, seen = [], collections.Counter()
    for path in paths:
        image = _named_errors(load_image, path, what="target ")
        stem = os.path.splitext(os.path.basename(path))[0]
        seen[stem] += 1
        targets.append(Target(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}", image))
    return targets


def read_inputs(values: Sequence) -> tuple[list[Reference], list[Target], list[str]]:
    """The page's values in order (image file, painting, mask file and class name of each reference
    slot, then the target files) -> references, targets and notes; a ValueError says what to fix."""
    references, notes = [], []
    for i in range(MAX_REFERENCES):
        reference, slot_notes = read_reference(i + 1, *values[SLOT * i: SLOT * i + SLOT])
        if reference is not None:
            references.append(reference)
        notes += slot_notes
    if not references:
        raise ValueError("no reference: upload a reference image and paint (or upload) the mask of what to find")
    named = [bool(r.name) for r in references]
    if any(named) and not all(named):
        raise ValueError("name the class of every reference or of none (references with the same name are shots "
                         "of one class; without names each reference is its own concept)")
    return references, read_targets(values[-1]), notes


def mask_preview(index: int, image: np.ndarray, mask_file: str, side: int = PREVIEW_SIDE) -> np.ndarray:
    """What the page shows of an uploaded mask: the mask tinted over its reference image (as read by
    `load_image`), scaled to at most `side` pixels a side. The mask is read as the Segment button reads
    it (a ValueError says what is wrong with it)."""
    mask = _named_errors(load_mask, mask_file, image.shape[:2], f"reference {index}", what=f"reference {index}: ")
    picture = visualize.mask_overlay(image, mask)
    if max(picture.shape[:2]) > side:
        from PIL import Image

        small = Image.fromarray(picture)
        small.thumbnail((side, side))
        picture = np.asarray(small)
    return picture


# --- the model side -----------------------------------------------------------------------


def _context_key(references: Sequence[Reference]) -> str:
    digest = hashlib.sha1()
    for r in references:
        for part in (str(r.image.shape).encode(), r.image.tobytes(), np.packbits(r.mask).tobytes(), r.name.encode(), b"\0"):
            digest.update(part)
    return digest.hexdigest()


class Session:
    """A predictor with the contexts it has encoded, keyed by the reference inputs (`cache_size`
    kept, least recently used dropped), and a folder for the mask files of each press."""

    def __init__(self, predictor: Predictor, out_dir: str, cache_size: int = 8):
        self.predictor = predictor
        self.out_dir = out_dir
        self.cache_size = cache_size
        self._contexts: collections.OrderedDict[str, tuple[Context, list | None]] = collections.OrderedDict()
        self._lock = threading.Lock()  # Gradio calls from worker threads
        self._runs = 0

    def context(self, references: Sequence[Reference]) -> tuple[Context, list | None, bool]:
        """(context, concept names or None, whether it came from the cache)."""
        key = _context_key(references)
        with self._lock:
            if key in self._contexts:
                self._contexts.move_to_end(key)
                return (*self._contexts[key], True)
            names = [r.name for r in references] if references[0].name else ()
            stacks, concepts = concept_stacks([r.mask for r in references], names)
            # as the predict command: soft (resized) reference masks, as the reference's custom evaluation
            context = self.predictor.encode_context([r.image for r in references], stacks, class_names=concepts,
                                                    binarize=False)
            self._contexts[key] = (context, concepts)
            while len(self._contexts) > self.cache_size:
                self._contexts.popitem(last=False)
            return context, concepts, False

    def _run_dir(self) -> str:
        """A fresh folder for this press's files; the folder of the press KEPT_RUNS before goes."""
        with self._lock:
            self._runs += 1
            run = self._runs
        shutil.rmtree(os.path.join(self.out_dir, f"run{run - KEPT_RUNS}"), ignore_errors=True)
        path = os.path.join(self.out_dir, f"run{run}")
        os.makedirs(path)
        return path

    def segment(self, references: Sequence[Reference], targets: Sequence[Target]) -> Result:
        start = time.perf_counter()
        context, concepts, reused = self.context(references)
        encoded = time.perf_counter()
        labels = [str(c) for c in concepts] if concepts else None
        out_dir = self._run_dir()
        overlays, propagated, mask_files = [], [], []
        for target, pred in zip(targets, self.predictor.segment([t.image for t in targets], context)):
            pictures = visualize.prediction_pictures(target.image, pred, labels=labels)
            overlays.append((pictures.overlay, target.stem))
            for j, heat in enumerate(pictures.propagated):
                propagated.append((heat, f"{target.stem}: {labels[j]}" if labels else target.stem))
            for name, mask in pictures._replace(overlay=None, propagated=[]).file_names(target.stem):
                mask_files.append(os.path.join(out_dir, name))
                atomic_files.write_png(mask_files[-1], mask)
        done = time.perf_counter()
        k, n = context.size, len(references)
        how = ("context reused (the references are unchanged)" if reused else
               f"context encoded from {n} reference{'s' * (n > 1)} ({k} concept{'s' * (k > 1)}) in {encoded - start:.2f} s")
        status = f"{how}; {len(targets)} target{'s' * (len(targets) > 1)} segmented in {done - encoded:.2f} s"
        return Result(status, overlays, propagated, mask_files)


# --- the page -----------------------------------------------------------------------------


def synthetic_example(out_dir: str, size: int = 192, targets: int = 3, seed: int = 0) -> dict:
    """Files of an episode of a held-out synthetic class (the demo model never trained on it): a
    reference, its mask, its class name and `targets` targets of the same class."""
    from segic_jax.data import synthetic

    held_out = [c for c in synthetic.all_classes() if synthetic.class_split(c) == "test"]
    rng = np.random.default_rng(seed)
    cls = held_out[int(rng.integers(len(held_out)))]
    os.makedirs(out_dir, exist_ok=True)
    image, mask = synthetic.scene(rng, cls, size)
    example = dict(reference=os.path.join(out_dir, "reference.png"), mask=os.path.join(out_dir, "reference_mask.png"),
                   name=cls.name, targets=[])
    atomic_files.write_png(example["reference"], image)
    atomic_files.write_png(example["mask"], mask.astype(np.uint8) * 255)
    for i in range(targets):
        example["targets"].append(os.path.join(out_dir, f"target{i + 1}.png"))
        atomic_files.write_png(example["targets"][-1], synthetic.scene(rng, cls, size)[0])
    return example


def _import_gradio():
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no version check, no telemetry
    import gradio as gr

    return gr


def _layer_rgba(layer) -> np.ndarray:
    """A painted layer of the editor (a file Gradio received, or the bytes the browser sent) -> (H, W, 4)
    uint8, measured from its header (data.images' header reader and `check_pixels`, so every size is
    judged by the project's budget and named) before its pixels are decoded."""
    from PIL import Image

    source = io.BytesIO(layer) if isinstance(layer, (bytes, bytearray, memoryview)) else layer.path
    try:
        with images.open_header(source) as img:
            images.check_pixels(img.width, img.height, "the painting")
            return np.asarray(img.convert("RGBA"))
    except images.TooLarge:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"the painting cannot be read as an image ({e}); paint again") from None


@functools.cache
def _components():
    """The page's two image inputs that read what the browser sends their own way (classes made once
    Gradio is imported; `is_template` keeps the built-in component's look in the browser):

    - ImageFile, a gr.Image whose value is the uploaded file's path, unopened. Gradio's own opens the
      file with PIL first, so a file that is not an image stopped there, a traceback in the log and a
      bare "Error" in the page; the page reads it with data.images, which measures it before decoding
      it and says what is wrong in one line.
    - PaintEditor, a gr.ImageEditor whose value is its painted layers alone (background and composite
      None), each measured before it is decoded. Gradio's own decodes the background and the composite
      too, whatever their size, though the page uses neither: a small PNG declaring 12000x12000 pixels
      uploaded as a reference (and so copied into the editor) took the server to 9 GB."""
    gr = _import_gradio()
    from gradio import processing_utils

    class ImageFile(gr.Image):
        is_template = True
        slot = 0  # the reference it holds, 1-based, for the messages

        def preprocess(self, payload):
            if payload is None:
                return None
            if payload.path is not None:
                return str(payload.path)
            if payload.url and payload.url.startswith("data:"):  # a pasted image: its bytes to a file, undecoded
                return processing_utils.save_base64_to_cache(payload.url, self.GRADIO_CACHE)
            raise gr.Error(f"reference {self.slot}: the image arrived without its file; upload it again",
                           print_exception=False)

    class PaintEditor(gr.ImageEditor):
        is_template = True
        slot = 0  # the reference it paints, 1-based, for the messages

        def preprocess(self, payload):
            if payload is None:
                return None
            if payload.id is not None:  # the browser sent the layers beforehand, as bytes
                blobs = self.blob_storage.pop(payload.id, None)
                layers = blobs.layers if blobs is not None else []
            else:
                layers = payload.layers
            try:
                painted = [_layer_rgba(layer) for layer in layers if layer is not None]
            except ValueError as e:
                raise gr.Error(f"reference {self.slot}: {e}", print_exception=False) from None
            return {"background": None, "layers": painted, "composite": None}

    return ImageFile, PaintEditor


def segment_handler(session: Session):
    """The function the Segment button calls: the page's values -> (status, overlays, propagated
    masks, mask files). Bad input is a gr.Error (shown in the page; the server carries on)."""
    gr = _import_gradio()

    def segment(*values):
        try:
            references, targets, notes = read_inputs(values)
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None
        for note in notes:
            gr.Warning(note)
        result = session.segment(references, targets)
        print(f"serve: {result.status}", flush=True)
        status = "\n".join([f"**{result.status}**", *(f"- {n}" for n in notes)])
        return status, result.overlays, result.propagated, result.mask_files

    return segment


def upload_handler(index: int, with_editor: bool):
    """The function a reference slot's image upload (`with_editor`) or mask upload calls: (image file,
    mask file) -> (the image for the editor to paint on, if `with_editor`, and) the mask's preview.
    What the Segment button would refuse of them is said at once, as a gr.Warning: an image it cannot
    read (and so does not copy into the editor) from the image's upload, a mask from either."""
    gr = _import_gradio()

    def check(image_file, mask_file):
        image = preview = None
        try:
            if image_file:
                image = _named_errors(load_image, image_file, what=f"reference {index}: ")
        except ValueError as e:
            if with_editor:
                gr.Warning(str(e))
        if image is not None and mask_file:
            try:
                preview = mask_preview(index, image, mask_file)
            except ValueError as e:
                gr.Warning(str(e))
        return (image_file if image is not None else None, preview) if with_editor else preview

    return check


def build_page(session: Session, model_note: str, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB):
    """The Gradio Blocks of the page (launched by `serve`)."""
    gr = _import_gradio()
    ImageFile, PaintEditor = _components()
    example = synthetic_example(os.path.join(session.out_dir, "example"))
    images_in, editors, masks, previews, names = [], [], [], [], []
    limits = f"Each upload may be up to {max_upload_mb:g} MB and {images.max_pixels() / 1e6:.1f} megapixels."
    # the files Gradio makes for the page: swept hourly of those a day old (and at a clean shutdown)
    with gr.Blocks(title="SEGIC in-context segmentation", analytics_enabled=False, delete_cache=(3600, 86400)) as page:
        gr.Markdown("## SEGIC in-context segmentation\n"
                    "Show the model what to find: upload a reference image, then paint over the object in the editor "
                    "below it (or upload its mask: foreground > 127, or palette index != 0). Name its class if you "
                    "like; references with the same name are shots of one class, unnamed references are each their "
                    "own concept. Then upload targets and press **Segment**. Painting needs WebGL in the browser; "
                    f"without it, upload the mask. {limits}\n\n{model_note}")
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Tabs():
                    for i in range(MAX_REFERENCES):
                        with gr.Tab(f"Reference {i + 1}"):
                            # the upload is a plain image (the file as sent, read as the predict command reads
                            # it); the editor gets a copy to paint on and works only where the browser has WebGL
                            images_in.append(ImageFile(label="reference image", elem_id=f"reference-{i}",
                                                       type="filepath", image_mode=None,
                                                       sources=["upload", "clipboard"], height=240))
                            editors.append(PaintEditor(
                                label="paint the mask over it", elem_id=f"paint-{i}", type="numpy", sources=None,
                                transforms=(), layers=False, height=420,
                                brush=gr.Brush(colors=["#ff3c3c"], color_mode="fixed"),
                            ))
                            images_in[i].slot = editors[i].slot = i + 1
                            with gr.Row():
                                masks.append(gr.File(label="or upload its mask", elem_id=f"reference-mask-{i}",
                                                     file_types=["image"], type="filepath"))
                                previews.append(gr.Image(label="the uploaded mask over the image", interactive=False,
                                                         elem_id=f"mask-preview-{i}", format="png", height=200,
                                                         buttons=[]))
                            names.append(gr.Textbox(label="class name (optional)", elem_id=f"class-name-{i}",
                                                    placeholder="e.g. dog"))
                            images_in[i].change(upload_handler(i + 1, True), [images_in[i], masks[i]],
                                                [editors[i], previews[i]], show_progress="hidden",
                                                api_name=f"reference_{i + 1}")
                            masks[i].change(upload_handler(i + 1, False), [images_in[i], masks[i]], previews[i],
                                            show_progress="hidden", api_name=f"reference_mask_{i + 1}")
            with gr.Column(scale=2):
                targets = gr.File(label="targets", elem_id="targets", file_count="multiple", file_types=["image"],
                                  type="filepath")
                run = gr.Button("Segment", variant="primary", elem_id="segment")
                load_example = gr.Button("Load a synthetic example", elem_id="example")
                status = gr.Markdown(elem_id="status")
        with gr.Row():
            # whole pictures (a single target is not cropped to the gallery's width), their legends readable
            shown = dict(format="png", columns=3, height="auto", object_fit="contain", preview=False)
            overlays = gr.Gallery(label="masks over the targets", elem_id="overlays", **shown)
            propagated = gr.Gallery(label="propagated masks (red high) with their point prompts", elem_id="propagated",
                                    **shown)
        mask_files = gr.File(label="binary masks (PNG, 0/255 at each target's size)", elem_id="masks",
                             file_count="multiple", interactive=False)
        inputs = [c for i in range(MAX_REFERENCES) for c in (images_in[i], editors[i], masks[i], names[i])] + [targets]
        run.click(segment_handler(session), inputs, [status, overlays, propagated, mask_files], concurrency_limit=1,
                  api_name="segment")
        load_example.click(lambda: (example["reference"], example["mask"], example["name"], example["targets"]),
                           None, [images_in[0], masks[0], names[0], targets])
    return page


def checkpoint_dir(checkpoint: str | None, demo_export: str = DEMO_EXPORT) -> tuple[str, str]:
    """(what to load, a line for the page saying which model it is). Without a checkpoint: the demo
    export, or a FileNotFoundError saying how to make it."""
    from segic_jax import pretrained

    if checkpoint:
        return pretrained.checkpoint_path(checkpoint), f"Model: `{checkpoint}`."
    if not os.path.isdir(demo_export):
        raise FileNotFoundError(
            f"no --checkpoint given and no demo model at {demo_export}: train it with `{DEMO_COMMAND}` (about 6 "
            "minutes on 2 CPU cores, nothing downloaded), or give --checkpoint DIR (a converted SEGIC checkpoint or a "
            f"training run's export/) or a release name ({', '.join(pretrained.RELEASES)})")
    return demo_export, (f"Model: the built-in demo (`{demo_export}`): random-weight encoders and a head trained on "
                         "synthetic shapes, so it finds shapes like those of *Load a synthetic example*, not objects "
                         "in photos. Give `--checkpoint` for a real model.")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve(checkpoint: str | None = None, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, share: bool = False,
          dtype: str = "float32", batch_size: int = 2, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> None:
    """Load the model, start the page and serve until Ctrl-C (or SIGTERM). Each upload may be up to
    `max_upload_mb` MB (2**20 bytes); a larger one is cut off while it arrives. What the page and
    Gradio write (uploads, pictures, mask files) goes to one folder of this run, removed at the stop:
    Gradio's own (GRADIO_TEMP_DIR, read when Gradio is imported) is made a subfolder of it."""
    if not max_upload_mb > 0:
        raise ValueError(f"the upload limit must be a positive number of megabytes, not {max_upload_mb!r}")
    path, note = checkpoint_dir(checkpoint)
    predictor = Predictor.from_checkpoint(path, dtype=dtype, batch_size=batch_size)
    parent = os.environ.get(GRADIO_TEMP_VARIABLE) or None  # a GRADIO_TEMP_DIR given holds this run's folder
    if parent:
        os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segic_serve_", dir=parent) as out_dir:
        os.environ[GRADIO_TEMP_VARIABLE] = os.path.join(out_dir, "gradio")
        try:
            page = build_page(Session(predictor, out_dir), note, max_upload_mb)
            try:
                page.launch(server_name=host, server_port=port, share=share, ssr_mode=False, allowed_paths=[out_dir],
                            quiet=True, prevent_thread_lock=True, mcp_server=False, pwa=False,
                            max_file_size=int(max_upload_mb * 2**20), css=PAGE_CSS)
            except OSError:  # Gradio's message names its own settings, not this command's flags
                raise ValueError(f"cannot listen on {host}:{port}: the port is in use or the address is not this "
                                 "machine's; give another --port (or --host)") from None
            print(f"serving {path} at {page.local_url}" + (f" and {page.share_url}" if page.share_url else "")
                  + " (Ctrl-C stops)", flush=True)
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, _interrupt)  # a kill or `docker stop` closes and cleans up as Ctrl-C does
            page.block_thread()
        finally:
            if parent:
                os.environ[GRADIO_TEMP_VARIABLE] = parent
            else:
                os.environ.pop(GRADIO_TEMP_VARIABLE, None)


def run(checkpoint: str | None = None, **options) -> int:
    """`serve` as a command (main.py's --mode serve): the exit status, a mistake reported in one line."""
    try:
        serve(checkpoint, **options)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # while the model loads; once serving, Ctrl-C closes the page and returns
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit("the page starts with: python main.py --mode serve [--checkpoint DIR] (python main.py --help)")
