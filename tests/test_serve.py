"""The interactive page (segic_jax/serve.py): what the Segment button does, without a browser
(paintings and uploaded masks, the Predictor's masks, the context encoded once and reused, bad input
as a readable message), and the page itself in headless Chromium, its downloaded mask equal to the
Predictor's."""

import io
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image
from typing import NamedTuple

from sandbox import free_port, marking_stand_in, python_path
from segic_jax import serve, visualize
from segic_jax.data.images import load_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's chromium and chromium-driver
LONG = "b_a_long_name_as_cameras_phones_and_scanners_give_their_pictures_IMG_20261207_093512_from_the_holiday_album"  # a target's file name, its caption


@pytest.fixture
def session(predictor, tmp_path):
    return serve.Session(predictor, str(tmp_path / "out"))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A decompression bomb: a 17 KB PNG declaring 12000x12000 pixels (1-bit; 576 MB once decoded as RGBA)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (12000, 12000)).save(path, optimize=True)
    assert path.stat().st_size < 100_000
    return path


@pytest.fixture(scope="module")
def page(predictor, tmp_path_factory):
    """The page's Blocks (not launched) and its components by elem_id."""
    blocks = serve.build_page(serve.Session(predictor, str(tmp_path_factory.mktemp("page"))), "a test model")
    return blocks, {b.elem_id: b for b in blocks.blocks.values() if getattr(b, "elem_id", None)}


def _scene(rng, h, w, box=(0.25, 0.75, 0.2, 0.5)):
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[int(h * box[0]): int(h * box[1]), int(w * box[2]): int(w * box[3])] = True
    return image, mask


def _save(path, array):
    Image.fromarray(array).save(path)
    return str(path)


class _Slot(NamedTuple):
    image: np.ndarray | str | None  # the uploaded reference image (or its file as uploaded), None for none
    painted: np.ndarray | None  # where the brush went, None for no painting


def _editor(image, painted=None):
    return _Slot(image, painted)


def _editor_value(slot: _Slot):
    """An ImageEditor value as Gradio hands it over (type numpy, RGBA): the image the page copied
    there as background (none if nothing was uploaded) and one brush layer (the canvas's size)."""
    layer = np.zeros((slot.painted if slot.painted is not None else slot.image).shape[:2] + (4,), np.uint8)
    if slot.painted is not None:
        layer[slot.painted] = (255, 60, 60, 255)
    background = None
    if slot.image is not None:
        background = np.concatenate([slot.image, np.full(slot.image.shape[:2] + (1,), 255, np.uint8)], -1)
    return {"background": background, "layers": [layer], "composite": background}


def _values(folder, references, targets):
    """The page's values in order: (image file, painting, mask file, class name) per reference slot,
    then the targets; `references` are (_editor(image, painted), mask file, name), each image
    written to a file of its own as an upload is."""
    values = []
    for slot, mask_file, name in references:
        image_file = None
        if isinstance(slot.image, str):  # a file as uploaded, not an image array: no painting
            values += [slot.image, None, mask_file, name]
            continue
        if slot.image is not None:
            handle, image_file = tempfile.mkstemp(suffix=".png", dir=folder)
            os.close(handle)
            _save(image_file, slot.image)
        values += [image_file, _editor_value(slot) if slot.image is not None or slot.painted is not None else None,
                   mask_file, name]
    values += [None, None, None, ""] * (serve.MAX_REFERENCES - len(references))
    return values + [targets]


def _counting_encodes(monkeypatch, predictor) -> list:
    calls = []
    encode = predictor.encode_context

    def counted(*args, **kwargs):
        calls.append(kwargs.get("class_names"))
        return encode(*args, **kwargs)

    monkeypatch.setattr(predictor, "encode_context", counted)
    return calls


def _read_mask(path):
    array = np.asarray(Image.open(path))
    assert set(np.unique(array)) <= {0, 255}
    return array == 255


def test_segment_button_gives_the_predictors_masks_and_encodes_the_context_once(session, predictor, monkeypatch, tmp_path, rng):
    ref, mask = _scene(rng, 70, 90)
    mask_path = _save(tmp_path / "ref_mask.png", mask.astype(np.uint8) * 255)
    targets = [_save(tmp_path / "a.png", _scene(rng, 60, 80)[0]), _save(tmp_path / "b.jpg", _scene(rng, 90, 50)[0])]
    images = [load_image(t) for t in targets]
    # the predict command's context: soft reference masks
    expected = predictor.segment(images, predictor.encode_context([ref], [mask], binarize=False))
    calls = _counting_encodes(monkeypatch, predictor)
    segment = serve.segment_handler(session)

    status, overlays, propagated, mask_files = segment(*_values(tmp_path, [(_editor(ref, mask), None, " ")], targets))
    assert len(calls) == 1 and status.startswith("**context encoded from 1 reference (1 concept)")
    assert [os.path.basename(f) for f in mask_files] == ["a_mask0.png", "b_mask0.png"]
    for path, image, pred in zip(mask_files, images, expected):
        assert np.array_equal(_read_mask(path), pred.masks[0])
    assert 0 < expected[0].masks.mean() < 1  # a mask with both sides, so equality means something
    assert [caption for _, caption in overlays] == ["a", "b"] == [caption for _, caption in propagated]
    for (overlay, _), (heat, _), image, pred in zip(overlays, propagated, images, expected):
        pictures = visualize.prediction_pictures(image, pred)
        assert np.array_equal(overlay, pictures.overlay) and np.array_equal(heat, pictures.propagated[0])

    # only the targets change: decoded against the cached context
    status, _, _, mask_files = segment(*_values(tmp_path, [(_editor(ref, mask), None, "")], targets[1:]))
    assert len(calls) == 1 and status.startswith("**context reused")
    assert np.array_equal(_read_mask(mask_files[0]), expected[1].masks[0])
    # the same mask uploaded instead of painted is the same context
    assert "context reused" in segment(*_values(tmp_path, [(_editor(ref), mask_path, "")], targets))[0]
    # a class name, another mask or another image is a new context
    assert "context encoded" in segment(*_values(tmp_path, [(_editor(ref, mask), None, "dog")], targets))[0]
    assert calls[-1] == ["dog"]
    assert "context encoded" in segment(*_values(tmp_path, [(_editor(ref, np.roll(mask, 3, 1)), None, "dog")], targets))[0]
    assert "context encoded" in segment(*_values(tmp_path, [(_editor(255 - ref, np.roll(mask, 3, 1)), None, "dog")], targets))[0]
    assert len(calls) == 4
    assert "context reused" in segment(*_values(tmp_path, [(_editor(ref, mask), None, "dog")], targets))[0]
    assert len(calls) == 4


def test_references_with_one_name_are_shots_of_one_concept(session, predictor, tmp_path, rng):
    (a, ma), (b, mb) = _scene(rng, 60, 60), _scene(rng, 50, 70, box=(0.1, 0.6, 0.5, 0.9))
    target = _save(tmp_path / "t.png", _scene(rng, 64, 64)[0])
    segment = serve.segment_handler(session)
    _, overlays, propagated, mask_files = segment(*_values(tmp_path, [(_editor(a, ma), None, "cat"), (_editor(b, mb), None, "cat")], [target]))
    context = predictor.encode_context([a, b], [ma, mb], class_names=["cat"], binarize=False)
    (pred,) = predictor.segment([load_image(target)], context)
    assert [os.path.basename(f) for f in mask_files] == ["t_mask0.png"]
    assert np.array_equal(_read_mask(mask_files[0]), pred.masks[0])
    assert [c for _, c in propagated] == ["t: cat"]

    _, _, propagated, mask_files = segment(*_values(tmp_path, [(_editor(a, ma), None, "cat"), (_editor(b, mb), None, "dog")], [target, target]))
    assert [os.path.basename(f) for f in mask_files] == ["t_mask0.png", "t_mask1.png", "t-2_mask0.png", "t-2_mask1.png"]
    assert [c for _, c in propagated] == ["t: cat", "t: dog", "t-2: cat", "t-2: dog"]
    context = predictor.encode_context([a, b], [np.stack([ma, 0 * ma]), np.stack([0 * mb, mb])], class_names=["cat", "dog"],
                                       binarize=False)
    (pred,) = predictor.segment([load_image(target)], context)
    for j in range(2):
        assert np.array_equal(_read_mask(mask_files[j]), pred.masks[j])


def test_bad_input_is_a_readable_message_and_the_page_carries_on(session, tmp_path, rng, bomb):
    import gradio as gr

    ref, mask = _scene(rng, 40, 60)
    good_target = _save(tmp_path / "target.png", ref)
    uploads = tmp_path / "gradio" / "3f9c2a"  # Gradio keeps uploads in a hashed folder; messages name the file only
    uploads.mkdir(parents=True)
    small = _save(uploads / "small_mask.png", mask[:20].astype(np.uint8) * 255)
    empty = _save(uploads / "empty_mask.png", np.zeros((40, 60), np.uint8))
    notes = uploads / "notes.png"
    notes.write_text("not an image")
    zero_mask, zero = uploads / "zero_mask.png", uploads / "zero.png"  # what a failed or cancelled upload leaves
    zero_mask.write_bytes(b"")
    zero.write_bytes(b"")
    good = (_editor(ref, mask), None, "")
    cases = [
        ([], [good_target], r"no reference: upload a reference image and paint"),
        ([(_editor(ref), None, "")], [good_target], r"reference 1 has no mask: paint over the object .* or upload a mask"),
        ([(_editor(ref), empty, "")], [good_target], r"mask empty_mask\.png is empty"),
        ([(_editor(ref), small, "")], [good_target], r"mask small_mask\.png is 60x20 \(WxH\) but reference 1 is 60x40"),
        ([good], [str(notes)], r"cannot read notes\.png as an image"),
        ([good], [], r"no target: upload at least one target image"),
        ([good], None, r"no target"),
        ([good, (_editor(None), str(small), "")], [good_target], r"reference 2: upload the reference image"),
        # painted on the editor's empty canvas, no image uploaded
        ([(_editor(None, np.eye(800, dtype=bool)), None, "")], [good_target], r"reference 1: upload the reference image \(its painting"),
        # painted over an earlier image of another size
        ([(_editor(ref, np.ones((30, 30), bool)), None, "")], [good_target],
         r"reference 1: the painting is 30x30 but the image is 60x40; paint again"),
        ([(_editor(ref, mask), None, "cat"), good], [good_target], r"name the class of every reference or of none"),
        ([(_editor(ref), str(zero_mask), "")], [good_target], r"^reference 1: zero_mask\.png is an empty file \(0 bytes\): upload it again"),
        ([(_editor(str(notes)), None, "")], [good_target], r"^reference 1: cannot read notes\.png as an image"),
        ([(_editor(str(zero)), str(small), "")], [good_target], r"^reference 1: zero\.png is an empty file \(0 bytes\)"),
        ([good], [good_target, str(zero)], r"^target zero\.png is an empty file \(0 bytes\)"),
        ([(_editor(str(bomb)), str(small), "")], [good_target],
         r"^reference 1: bomb\.png is 12000x12000 pixels \(144\.0 MP\), over the limit of \d+\.\d MP"),
        ([good, (_editor(ref, mask), None, "b\x00g")], [good_target],
         r"^reference 2: the class name 'b\\x00g' contains the control character '\\x00'; type the name again"),
    ]
    segment = serve.segment_handler(session)
    for references, targets, message in cases:
        with pytest.raises(gr.Error) as error:
            segment(*_values(tmp_path, references, targets))
        assert re.search(message, error.value.message), (message, error.value.message)
        assert str(uploads) not in error.value.message and "\n" not in error.value.message
    status, _, _, mask_files = segment(*_values(tmp_path, [good], [good_target]))
    assert "context encoded" in status and len(mask_files) == 1
    # both a painting and a mask file: the file is used, and the page says so
    mask_path = _save(tmp_path / "mask.png", mask.astype(np.uint8) * 255)
    with pytest.warns(UserWarning, match="the uploaded mask mask.png is used, the painting is not"):
        status, *_ = segment(*_values(tmp_path, [(_editor(ref, np.roll(mask, 5, 0)), mask_path, "")], [good_target]))
    assert "context reused" in status and "the painting is not" in status


def test_a_class_name_on_several_lines_is_used_on_one_with_a_note(session, tmp_path, rng):
    ref, mask = _scene(rng, 40, 60)
    target = _save(tmp_path / "t.png", _scene(rng, 48, 48)[0])
    segment = serve.segment_handler(session)
    note = r"reference 1: the class name is used on one line, as 'blue star' \(line breaks and tabs become spaces\)"
    with pytest.warns(UserWarning, match=f"^{note}$"):
        status, _, propagated, _ = segment(*_values(tmp_path, [(_editor(ref, mask), None, "blue\r\n\tstar\n")], [target]))
    assert "context encoded" in status and re.search(f"^- {note}$", status, re.M)
    assert [caption for _, caption in propagated] == ["t: blue star"]
    status, *_ = segment(*_values(tmp_path, [(_editor(ref, mask), None, "blue star")], [target]))
    assert "context reused" in status  # the name typed on one line is the same context


def test_the_image_inputs_measure_uploads_before_decoding_them(page, tmp_path, rng, bomb, monkeypatch):
    import base64
    import struct
    import zlib

    import gradio as gr
    from gradio.components.image import ImageData
    from gradio.components.image_editor import EditorData, EditorDataBlobs
    from gradio.data_classes import FileData

    _, components = page
    image, editor = components["reference-0"], components["paint-0"]
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    # the reference upload is the file as sent, unopened (Gradio's own gr.Image opens it: a traceback, a bare "Error")
    assert image.preprocess(ImageData(path=str(notes), orig_name="notes.png")) == str(notes)
    assert image.preprocess(None) is None
    # a pasted image (a data: URL) is written to a file as sent, not decoded
    monkeypatch.setattr(image, "GRADIO_CACHE", str(tmp_path / "cache"))
    pasted = image.preprocess(ImageData(url="data:image/png;base64," + base64.b64encode(bomb.read_bytes()).decode()))
    assert pasted.startswith(str(tmp_path / "cache")) and open(pasted, "rb").read() == bomb.read_bytes()
    # the editor gives its painted layers; the background and composite (the reference, here a bomb) are not read
    _, mask = _scene(rng, 40, 60)
    layer = np.zeros((40, 60, 4), np.uint8)
    layer[mask] = (255, 60, 60, 255)
    layer_file = _save(tmp_path / "layer.png", layer)
    value = editor.preprocess(EditorData(background=FileData(path=str(bomb)), layers=[FileData(path=layer_file)],
                                         composite=FileData(path=str(bomb))))
    assert value["background"] is None and value["composite"] is None
    assert len(value["layers"]) == 1 and np.array_equal(value["layers"][0], layer)
    # layers the browser sent beforehand as bytes
    with open(layer_file, "rb") as f:
        editor.blob_storage["sent"] = EditorDataBlobs(background=bomb.read_bytes(), layers=[None, f.read()], composite=None)
    value = editor.preprocess(EditorData(id="sent"))
    assert len(value["layers"]) == 1 and np.array_equal(value["layers"][0], layer) and "sent" not in editor.blob_storage
    # a header declaring 30000x30000 (beyond Pillow's own limit, which would refuse it in its words): the budget's
    header = tmp_path / "header.png"
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0))
                       + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    for path, message in ((bomb, r"the painting is 12000x12000 pixels \(144\.0 MP\), over the limit of \d+\.\d MP"),
                          (header, r"the painting is 30000x30000 pixels \(900\.0 MP\), over the limit of \d+\.\d MP"),
                          (notes, r"the painting cannot be read as an image \(.*\); paint again")):
        with pytest.raises(gr.Error) as error:
            editor.preprocess(EditorData(layers=[FileData(path=str(path))]))
        assert re.search(f"^reference 1: {message}", error.value.message), error.value.message


def test_an_upload_is_checked_at_once_and_its_mask_shown_over_its_image(page, tmp_path, rng, bomb):
    ref, mask = _scene(rng, 40, 60)
    ref_file, mask_file = _save(tmp_path / "ref.png", ref), _save(tmp_path / "ref_mask.png", mask.astype(np.uint8) * 255)
    empty = _save(tmp_path / "empty_mask.png", np.zeros((40, 60), np.uint8))
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    on_image, on_mask = serve.upload_handler(2, True), serve.upload_handler(2, False)
    editor_value, preview = on_image(ref_file, mask_file)
    assert editor_value == ref_file and np.array_equal(preview, visualize.mask_overlay(ref, mask))
    assert on_image(ref_file, None) == (ref_file, None) and on_image(None, mask_file) == (None, None)
    assert np.array_equal(on_mask(ref_file, mask_file), preview)
    assert on_mask(None, mask_file) is None  # the image may come next
    with pytest.warns(UserWarning, match=r"^reference 2: mask empty_mask\.png is empty"):
        assert on_mask(ref_file, empty) is None
    for path, message in ((notes, r"cannot read notes\.png as an image"),
                          (bomb, r"bomb\.png is 12000x12000 pixels \(144\.0 MP\), over the limit of")):
        with pytest.warns(UserWarning, match=f"^reference 2: {message}"):
            assert on_image(str(path), mask_file) == (None, None)  # not put in the editor to paint on
    big = np.zeros((600, 1200, 3), np.uint8)
    big_preview = on_mask(_save(tmp_path / "big.png", big), _save(tmp_path / "big_mask.png", np.full((600, 1200), 255, np.uint8)))
    assert big_preview.shape == (serve.PREVIEW_SIDE // 2, serve.PREVIEW_SIDE, 3)

    # the synthetic example's button fills the first slot's image and mask, and each of their changes shows the mask
    blocks, components = page
    ids = {name: components[name]._id for name in ("example", "reference-0", "reference-mask-0", "mask-preview-0")}
    dependencies = blocks.get_config_file()["dependencies"]
    (load,) = [d for d in dependencies if d["targets"] == [(ids["example"], "click")]]
    assert {ids["reference-0"], ids["reference-mask-0"]} <= set(load["outputs"])
    for changed in ("reference-0", "reference-mask-0"):
        (shown,) = [d for d in dependencies if d["targets"] == [(ids[changed], "change")]]
        assert shown["inputs"] == [ids["reference-0"], ids["reference-mask-0"]] and ids["mask-preview-0"] in shown["outputs"]
    example = serve.synthetic_example(str(tmp_path / "example"))
    image = load_image(example["reference"])
    _, example_preview = serve.upload_handler(1, True)(example["reference"], example["mask"])
    assert np.array_equal(example_preview, visualize.mask_overlay(image, _read_mask(example["mask"])))


def test_the_galleries_show_whole_pictures(page):
    _, components = page
    for name in ("overlays", "propagated"):
        config = components[name].get_config()
        # "cover" (Gradio's default) cut a single target to the gallery's width, its legend and caption with it
        assert (config["object_fit"], config["preview"], config["height"], config["columns"]) == ("contain", False, "auto", 3)


def test_without_a_checkpoint_the_demo_export_or_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        serve.checkpoint_dir(None, demo_export=str(tmp_path / "export"))
    assert serve.DEMO_COMMAND in str(error.value) and "nothing downloaded" in str(error.value)
    assert serve.DEMO_COMMAND == "python main.py --config configs/segic.py --workdir /tmp/segic_demo"  # the README's
    (tmp_path / "export").mkdir()
    path, note = serve.checkpoint_dir(None, demo_export=str(tmp_path / "export"))
    assert path == str(tmp_path / "export") and "built-in demo" in note
    assert serve.checkpoint_dir(str(tmp_path / "ckpt"))[0] == str(tmp_path / "ckpt")


def test_gradio_is_imported_by_the_page_alone(tmp_path):
    site, mark = marking_stand_in(tmp_path, "gradio")
    code = ("import segic_jax.inference.predictor, segic_jax.inference.segment_files, segic_jax.evaluation.evaluate, "
            "segic_jax.evaluation.example, segic_jax.training.trainer, segic_jax.serve")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=python_path(site, ROOT), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not mark.exists()
    subprocess.run([sys.executable, "-c", "import segic_jax.serve as s; s._import_gradio()"], cwd=ROOT,
                   env=python_path(site, ROOT), capture_output=True, timeout=120)
    assert mark.exists()  # the stand-in works


def _start_server(checkpoint, tmp_path, env=None, *flags):
    """The page's server on a free port, `python main.py --mode serve` with `flags`; returns the
    process, its URL and its output lines."""
    port = free_port()
    env = env or dict(python_path(ROOT), GRADIO_TEMP_DIR=str(tmp_path / "gradio"), TMPDIR=str(tmp_path))
    argv = [sys.executable, os.path.join(ROOT, "main.py"), "--mode", "serve", "--checkpoint", checkpoint,
            "--port", str(port), *flags]
    server = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.stdout], daemon=True).start()
    log, deadline = [], time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            log.append(lines.get(timeout=1))
        except queue.Empty:
            assert server.poll() is None, "the server exited:\n" + "".join(log)
            continue
        if log[-1].startswith("serving "):
            return server, f"http://127.0.0.1:{port}/", lines, log
    server.kill()
    raise AssertionError("the server did not start in 90 s:\n" + "".join(log))


def _upload(url, path, name=None) -> tuple[int, object]:
    """POST a file to the server's upload route as the page does: (HTTP status, its path there or the refusal)."""
    import json

    boundary = os.urandom(16).hex()
    with open(path, "rb") as f:
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name or os.path.basename(path)}"'
                f"\r\nContent-Type: application/octet-stream\r\n\r\n").encode() + f.read() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "gradio_api/upload", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())[0]
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _call(url, api_name, *data) -> tuple[str, object]:
    """Run one of the page's events through Gradio's HTTP API: ("complete", outputs) or ("error", message)."""
    import json

    request = urllib.request.Request(url + f"gradio_api/call/{api_name}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        event = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(url + f"gradio_api/call/{api_name}/{event}", timeout=300) as response:
        stream = response.read().decode()
    kind, payload = re.findall(r"^event: (\w+)\ndata: (.*)$", stream, re.M)[-1]
    payload = json.loads(payload)
    return kind, (payload["error"] if kind == "error" else payload)


def _file(path):
    return {"path": path, "orig_name": os.path.basename(path), "meta": {"_type": "gradio.FileData"}}


def _assert_peak_memory_below(process, gb):
    with open(f"/proc/{process.pid}/status") as f:
        peak_kb = int(re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M).group(1))
    assert peak_kb < gb * 2**20, f"the server's peak memory was {peak_kb / 2**20:.1f} GB"


def test_the_server_bounds_uploads_and_bombs_explains_bad_files_and_leaves_no_files(checkpoint, tmp_path, rng, bomb):
    ref, mask = _scene(rng, 40, 60)
    files = dict(bomb=str(bomb), ref=_save(tmp_path / "ref.png", ref), target=_save(tmp_path / "target.png", ref),
                 mask=_save(tmp_path / "ref_mask.png", mask.astype(np.uint8) * 255))
    for name, content in (("notes", b"not an image"), ("zero", b""), ("big", os.urandom(2**20 + 1))):
        (tmp_path / f"{name}.png").write_bytes(content)
        files[name] = str(tmp_path / f"{name}.png")
    temp = tmp_path / "temp"  # the server's temporary folder: empty again after a clean stop
    temp.mkdir()
    env = {k: v for k, v in python_path(ROOT).items() if k != "GRADIO_TEMP_DIR"}
    server, url, lines, log = _start_server(checkpoint, tmp_path, dict(env, TMPDIR=str(temp)), "--max_upload_mb=1")
    try:
        # an upload over the limit is cut off, with the limit in the message (the page says it before sending)
        assert _upload(url, files["big"]) == (413, "File size exceeded maximum allowed size of 1048576 bytes.")
        sent = {name: _upload(url, path) for name, path in files.items() if name != "big"}
        assert all(status == 200 for status, _ in sent.values()), sent
        sent = {name: _file(path) for name, (_, path) in sent.items()}
        unused = [None, None, None, ""] * (serve.MAX_REFERENCES - 1)
        # a bomb uploaded as the reference, copied into the editor (as the page does) and sent with it: measured
        # from its header, refused before it is decoded (Gradio's editor decoded it: 9 GB)
        assert _call(url, "reference_1", sent["bomb"], None) == ("complete", [None, None])  # not copied
        as_background = {"background": sent["bomb"], "layers": [], "composite": sent["bomb"], "id": None}
        kind, message = _call(url, "segment", sent["bomb"], as_background, sent["mask"], "", *unused, [sent["target"]])
        _assert_peak_memory_below(server, 1.5)
        assert kind == "error" and re.search(
            r"^reference 1: bomb\.png is 12000x12000 pixels \(144\.0 MP\), over the limit of \d+\.\d MP", message), message
        as_painting = {"background": None, "layers": [sent["bomb"]], "composite": None, "id": None}
        kind, message = _call(url, "segment", sent["ref"], as_painting, None, "", *unused, [sent["target"]])
        assert kind == "error" and re.search(r"^reference 1: the painting is 12000x12000 pixels .* over the limit of", message)
        # a file that is not an image, or an empty one, as the reference or its mask: one line, no traceback
        assert _call(url, "reference_1", sent["notes"], None) == ("complete", [None, None])
        assert _call(url, "reference_mask_1", sent["ref"], sent["zero"]) == ("complete", [None])
        for reference, mask_file, expected in ((sent["notes"], sent["mask"], r"cannot read notes\.png as an image"),
                                               (sent["ref"], sent["zero"], r"zero\.png is an empty file \(0 bytes\)"),
                                               (sent["zero"], None, r"zero\.png is an empty file \(0 bytes\)")):
            kind, message = _call(url, "segment", reference, None, mask_file, "", *unused, [sent["target"]])
            assert kind == "error" and re.search(f"^reference 1: {expected}", message) and "\n" not in message, message
        # and the page carries on (segmenting is the browser test's): the mask shown over its image
        kind, (editor, preview) = _call(url, "reference_1", sent["ref"], sent["mask"])
        assert kind == "complete" and editor["background"]["path"].endswith("ref.png") and preview["path"].endswith(".png")
        _assert_peak_memory_below(server, 1.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
    while not lines.empty():
        log.append(lines.get())
    assert server.returncode == 0 and "Traceback" not in "".join(log), "".join(log)
    assert sorted(os.listdir(temp)) == [], "".join(log)  # the uploads, Gradio's folders and the page's files went


def _browser(tmp_path):
    """Headless Chromium of the OS packages through its chromedriver; nothing is downloaded (the driver
    path skips Selenium Manager), and no name but the test server's resolves."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}", "--window-size=1280,1600",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                # no WebGL, as on machines whose Chromium cannot start its software GL: the painting editor
                # (pixi.js) then does not draw, and the page must work by upload alone
                "--disable-3d-apis"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no Chromium (apt-get install chromium chromium-driver)")
def test_the_page_in_a_browser_returns_the_predictors_mask(checkpoint, predictor, tmp_path, rng, monkeypatch):
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert os.path.exists(CHROMEDRIVER), f"Chromium is installed but not its driver {CHROMEDRIVER}: apt-get install chromium-driver"
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager, were it ever asked, may not download
    ref, mask = _scene(rng, 70, 90)
    paths = dict(ref=_save(tmp_path / "ref.png", ref), mask=_save(tmp_path / "ref_mask.png", mask.astype(np.uint8) * 255),
                 a=_save(tmp_path / "a.png", _scene(rng, 60, 80)[0]), b=_save(tmp_path / f"{LONG}.png", _scene(rng, 80, 64)[0]))
    expected = predictor.segment([load_image(paths["a"]), load_image(paths["b"])],
                                 predictor.encode_context([ref], [mask], binarize=False))
    server, url, lines, log = _start_server(checkpoint, tmp_path)
    browser = None
    try:
        browser = _browser(tmp_path)
        wait = WebDriverWait(browser, 60)
        browser.get(url)
        upload = lambda component, *files: wait.until(ec.presence_of_element_located(
            (By.CSS_SELECTOR, f"#{component} input[type=file]"))).send_keys("\n".join(files))
        upload("reference-0", paths["ref"])
        # the upload is shown and the mask file is listed
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#reference-0 img[src*='ref.png']")))
        upload("reference-mask-0", paths["mask"])
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#reference-mask-0 td[aria-label='ref_mask.png']")))
        # and shown over the image
        preview = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#mask-preview-0 img"))).get_attribute("src")
        # no target yet: a message in the page
        browser.find_element(By.ID, "segment").click()
        toast = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "[data-testid='toast-text']")))
        assert "no target: upload at least one target image" in toast.text
        upload("targets", paths["a"], paths["b"])
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"#targets td[aria-label='{LONG}.png']")))
        browser.find_element(By.ID, "segment").click()
        links = lambda _: [a for a in browser.find_elements(By.CSS_SELECTOR, "#masks a") if "_mask0.png" in a.get_attribute("href")]
        found = wait.until(lambda b: len(links(b)) == 2 and links(b))
        assert "context encoded from 1 reference" in browser.find_element(By.ID, "status").text
        hrefs = {os.path.basename(a.get_attribute("href")): a.get_attribute("href") for a in found}
        assert sorted(hrefs) == ["a_mask0.png", f"{LONG}_mask0.png"]
        for name, pred in zip(sorted(hrefs), expected):
            with urllib.request.urlopen(hrefs[name], timeout=30) as response:
                downloaded = np.asarray(Image.open(io.BytesIO(response.read())))
            assert set(np.unique(downloaded)) == {0, 255} and np.array_equal(downloaded == 255, pred.masks[0]), name
        # press again: the same references, so the context is reused (page and log say so)
        browser.find_element(By.ID, "segment").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "context reused"))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#overlays img")) >= 2
        assert len(browser.find_elements(By.CSS_SELECTOR, "#propagated img")) >= 2
        # the pictures whole (not cropped to their cells), their captions whole (wrapped, not cut with "...")
        for picture in browser.find_elements(By.CSS_SELECTOR, "#overlays img, #propagated img"):
            assert browser.execute_script("return getComputedStyle(arguments[0]).objectFit", picture) == "contain"
        captions = browser.find_elements(By.CSS_SELECTOR, "#overlays .caption-label, #propagated .caption-label")
        assert sorted(c.text for c in captions) == ["a", "a", LONG, LONG]
        for caption in captions:
            assert browser.execute_script("const s = getComputedStyle(arguments[0]); return [s.whiteSpace, "
                                          "arguments[0].scrollWidth <= arguments[0].clientWidth]", caption) == ["normal", True]
        # the synthetic example: its reference, and its mask shown over it
        browser.find_element(By.ID, "example").click()
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#mask-preview-0 img").get_attribute("src") != preview)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#reference-mask-0 td[aria-label='reference_mask.png']")))
        browser.save_screenshot(str(tmp_path / "page.png"))
        # nothing was asked of any host but the server
        requested = [json.loads(e["message"])["message"]["params"].get("request", {}).get("url", "")
                     for e in browser.get_log("performance")]
        hosts = {urllib.parse.urlsplit(u).hostname for u in requested if u.startswith(("http", "ws"))}
        assert hosts == {"127.0.0.1"}, hosts
    except Exception as error:
        if browser is None:
            raise
        # what the page and the server said, for a failure on a machine one cannot look at
        browser.save_screenshot(str(tmp_path / "failure.png"))
        console = "\n".join(f"{e['level']} {e['message'][:400]}" for e in browser.get_log("browser"))
        while not lines.empty():
            log.append(lines.get())
        raise AssertionError(f"{type(error).__name__}: {error}\nscreenshot: {tmp_path / 'failure.png'}\n"
                             f"the browser's console:\n{console}\nthe server's output:\n{''.join(log)[-4000:]}") from error
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(timeout=30)
    while not lines.empty():
        log.append(lines.get())
    assert server.returncode == 0, "".join(log)  # SIGTERM stops it as Ctrl-C does, its files removed
    assert not [p for p in os.listdir(tmp_path) if p.startswith("segic_serve_")]
    assert os.listdir(tmp_path / "gradio") == []  # the uploads and Gradio's folders went, under the GRADIO_TEMP_DIR given
    assert sum("serve: context encoded" in line for line in log) == 1
    assert sum("serve: context reused" in line for line in log) == 1, "".join(log)
