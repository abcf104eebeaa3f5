"""TFDS builders on tiny datasets in the real layouts: masks equal pycocotools', errors name the file."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from fake_datasets import write_coco, write_lvis, build_args, fake_splits
from segic_jax.data import build as build_cli
from segic_jax.data.sources import data_source, decode_instances


def _expected(annotation_path, image_root):
    from pycocotools.coco import COCO

    coco = COCO(annotation_path)
    out = {}
    for image_id, image in coco.imgs.items():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        if anns:
            out[image_id] = np.stack([coco.annToMask(a).astype(bool) for a in anns])
    return coco, out


def test_coco_instances_build_and_decode_like_pycocotools(tmp_path, rng):
    ann_path = write_coco(str(tmp_path / "coco"), rng)
    assert build_cli.main(build_args("coco_instances", str(tmp_path / "coco"), str(tmp_path / "data"))) == 0
    coco, expected = _expected(ann_path, str(tmp_path / "coco"))
    source = data_source("coco_instances", "train", str(tmp_path / "data"))
    assert len(source) == 2  # the unannotated image is skipped
    for i in range(len(source)):
        ex = decode_instances(source[i])
        image_id = int(source[i]["image_id"])
        np.testing.assert_array_equal(ex["masks"], expected[image_id])
        assert ex["category_names"] == ["person", "traffic light", "dog"]
        assert ex["iscrowd"].tolist() == [False, True, False]
        info = coco.imgs[image_id]
        on_disk = np.asarray(Image.open(tmp_path / "coco" / "train2017" / info["file_name"]).convert("RGB"))
        np.testing.assert_array_equal(ex["image"], on_disk)  # bytes kept as they were; grayscale read as RGB


def test_lvis_images_are_found_by_coco_url(tmp_path, rng):
    ann_path = write_lvis(str(tmp_path / "lvis"), rng)
    assert build_cli.main(build_args("lvis_instances", str(tmp_path / "lvis"), str(tmp_path / "data"))) == 0
    source = data_source("lvis_instances", "val", str(tmp_path / "data"))
    with open(ann_path) as f:
        data = json.load(f)
    for im in data["images"]:
        im["file_name"] = im["coco_url"].split("/")[-1]
    fixed = tmp_path / "lvis_as_coco.json"
    fixed.write_text(json.dumps(data))
    _, expected = _expected(str(fixed), None)
    got = {int(source[i]["image_id"]): decode_instances(source[i])["masks"] for i in range(len(source))}
    assert got.keys() == expected.keys()
    for k in got:
        np.testing.assert_array_equal(got[k], expected[k])


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("no_dir", "missing folder"),
        ("no_annotations", r"missing .*instances_train2017.json \(the train split\)"),
        ("bad_json", "instances_train2017.json is not valid JSON"),
        ("unknown_image", "refers to unknown image 999"),
        ("missing_image", "missing image .*000000000007.jpg"),
        ("wrong_mask_size", "mask size \\[5, 5\\] differs from the image's"),
    ],
)
def test_bad_layouts_are_named(tmp_path, rng, breakage, message, capsys):
    root = tmp_path / "coco"
    ann_path = write_coco(str(root), rng)
    data = json.loads(open(ann_path).read())
    if breakage == "no_dir":
        root = tmp_path / "elsewhere"
    elif breakage == "no_annotations":
        os.remove(ann_path)
    elif breakage == "bad_json":
        open(ann_path, "w").write("{not json")
    elif breakage == "unknown_image":
        data["annotations"][0]["image_id"] = 999
        open(ann_path, "w").write(json.dumps(data))
    elif breakage == "missing_image":
        os.remove(root / "train2017" / "000000000007.jpg")
    elif breakage == "wrong_mask_size":
        data["annotations"][1]["segmentation"]["size"] = [5, 5]
        data["annotations"][1]["segmentation"]["counts"] = [25]
        open(ann_path, "w").write(json.dumps(data))
    assert build_cli.main(build_args("coco_instances", str(root), str(tmp_path / "data"))) == 1
    import re

    assert re.search(message, capsys.readouterr().err)
    built = tmp_path / "data" / "coco_instances"
    assert not built.exists() or not any(p.name[0].isdigit() for p in built.iterdir())  # no finished version folder


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="build it with"):
        data_source("coco_instances", "train", str(tmp_path))


def test_ade20k_semantic_builds_and_prompts_with_the_original_names(tmp_path, rng):
    from fake_datasets import write_ade
    from segic_jax.data.sources import class_names, decode_semantic

    write_ade(str(tmp_path / "ade"), rng)  # its objectInfo150.txt names every class "class<i>;synonym"
    assert build_cli.main(build_args("ade20k_semantic", str(tmp_path / "ade"), str(tmp_path / "data"))) == 0
    names = class_names("ade20k_semantic")  # the original's list, not the user's file
    assert len(names) == 150 and names[0] == "wall" and names[4] == "tree" and names[149] == "flag"
    # the names the common csv copy of objectInfo150 truncates
    assert names[44] == "chest of drawers" and names[56] == "pool table" and names[64] == "coffee table"
    source = data_source("ade20k_semantic", "train", str(tmp_path / "data"))
    seen = set()
    for i in range(len(source)):
        ex = decode_semantic(source[i])
        png = np.asarray(Image.open(tmp_path / "ade" / "annotations" / source[i]["file_name"].decode().replace(".jpg", ".png")))
        np.testing.assert_array_equal(ex["label"], png)
        assert ex["classes"].tolist() == sorted(set(np.unique(png).tolist()) - {0})
        seen.add(tuple(ex["classes"].tolist()))
    assert seen == {(1, 5), (2, 5), (3, 5)}


def test_coco20i_class_maps_are_rasterised_from_instances(tmp_path, rng):
    from fake_datasets import write_coco2014
    from segic_jax.data.sources import class_names, decode_semantic

    write_coco2014(str(tmp_path / "coco14"), rng)
    assert build_cli.main(build_args("coco20i_semantic", str(tmp_path / "coco14"), str(tmp_path / "data"))) == 0
    # the original's coco80 names: VOC-style where the instances JSON differs
    names = class_names("coco20i_semantic")
    assert names[5] == "bus" and [names[i] for i in (3, 4, 57, 58, 60, 62)] == [
        "motorbike", "aeroplane", "sofa", "pottedplant", "diningtable", "tvmonitor"]
    source = data_source("coco20i_semantic", "train", str(tmp_path / "data"))
    by_name = {source[i]["file_name"].decode(): decode_semantic(source[i]) for i in range(len(source))}
    first = by_name["train2014/COCO_train2014_000000000001.jpg"]
    assert first["classes"].tolist() == [1, 6]
    assert first["label"][5, 5] == 1 and first["label"][15, 15] == 6  # the later annotation covers the overlap
    assert first["label"][25, 5] == 0


def test_ade20k_builds_without_a_class_name_file(tmp_path, rng):
    from fake_datasets import write_ade

    write_ade(str(tmp_path / "ade"), rng)
    os.remove(tmp_path / "ade" / "objectInfo150.txt")
    assert build_cli.main(build_args("ade20k_semantic", str(tmp_path / "ade"), str(tmp_path / "data"))) == 0


def _png_array(data):
    import io

    return np.asarray(Image.open(io.BytesIO(data)))


def test_fss1000_splits_by_class_lists(tmp_path, rng):
    from fake_datasets import write_fss

    write_fss(str(tmp_path / "fss"), rng)
    assert build_cli.main(build_args("fss1000", str(tmp_path / "fss"), str(tmp_path / "data"))) == 0
    counts = {}
    for split, classes in (("train", {"hot_dog", "cat"}), ("val", {"airliner"}), ("test", {"bear"})):
        source = data_source("fss1000", split, str(tmp_path / "data"))
        names = {source[i]["class_name"].decode() for i in range(len(source))}
        assert names == classes
        counts[split] = len(source)
        ex = source[0]
        on_disk = np.asarray(Image.open(tmp_path / "fss" / ex["file_name"].decode().replace(".jpg", ".png")))
        np.testing.assert_array_equal(_png_array(ex["mask"]), on_disk)
    assert counts == {"train": 6, "val": 3, "test": 3}


def test_davis_videos_keep_frames_and_palette_masks(tmp_path, rng):
    from fake_datasets import write_davis

    write_davis(str(tmp_path / "davis"), rng)
    assert build_cli.main(build_args("davis2017", str(tmp_path / "davis"), str(tmp_path / "data"))) == 0
    source = data_source("davis2017", "val", str(tmp_path / "data"))
    videos = {source[i]["video"].decode(): source[i] for i in range(len(source))}
    dogs = videos["dogs"]
    assert [n.decode() for n in dogs["frame_names"]] == ["00000", "00001", "00002", "00003"]
    labels = _png_array(dogs["masks"][2])
    assert set(np.unique(labels)) == {0, 1, 2}
    np.testing.assert_array_equal(labels, np.asarray(Image.open(tmp_path / "davis" / "Annotations/480p/dogs/00002.png")))


def test_youtube_vos_keeps_late_objects_and_sparse_masks(tmp_path, rng):
    from fake_datasets import write_youtube_vos

    write_youtube_vos(str(tmp_path / "ytvos"), rng)
    assert build_cli.main(build_args("youtube_vos", str(tmp_path / "ytvos"), str(tmp_path / "data"))) == 0
    (ex,) = [data_source("youtube_vos", "valid", str(tmp_path / "data"))[0]]
    assert [n.decode() for n in ex["frame_names"]] == ["00000", "00005", "00010"]
    assert [n.decode() for n in ex["mask_frames"]] == ["00000", "00010"]
    assert [int(i) for i in ex["objects"]["object_id"]] == [1, 2]
    assert [f.decode() for f in ex["objects"]["first_frame"]] == ["00000", "00010"]


def test_video_layout_errors_are_named(tmp_path, rng, capsys):
    from fake_datasets import write_davis

    write_davis(str(tmp_path / "davis"), rng)
    os.remove(tmp_path / "davis" / "Annotations/480p/bear/00002.png")
    assert build_cli.main(build_args("davis2017", str(tmp_path / "davis"), str(tmp_path / "data"))) == 1
    assert "bear lacks the masks of frames ['00002']" in capsys.readouterr().err


@pytest.mark.parametrize("data,message", [
    (b"\x80\x02cnumpyz\ndtype\nq\x00.", "unexpected numpyz.dtype in a split list"),  # no such module
    (b"\x80\x02cnumpy.random\nscalar\nq\x00.", "unexpected numpy.random.scalar in a split list"),  # no such name
    (b"\x80\x02cos\nsystem\n(S'true'\ntR.", "unexpected os.system in a split list"),
    # a bytes field of 1 TB in a file of 15 bytes: refused by the allocator, or found truncated
    (b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"abc.", r"\((a length in it is beyond this machine's memory|UnpicklingError: .*truncated)\)"),
    (b"\x80\x02cnumpy\ndtype\nq\x00X\x05\x00\x00\x00nopeZq\x01\x85q\x02Rq\x03.", r"\(TypeError: .*\)"),  # numpy refuses
], ids=["unknown_module", "unknown_name", "code", "terabyte", "bad_dtype"])
def test_crafted_split_lists_are_named_in_one_line(tmp_path, capsys, data, message):
    import re

    from segic_jax.data.builders.common import LayoutError
    from segic_jax.data.builders.semantic import hsnet_pools

    path = tmp_path / "splits" / "coco" / "val" / "fold0.pkl"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    with pytest.raises(LayoutError) as e:
        hsnet_pools(str(tmp_path / "splits"), "val")
    text = str(e.value)
    assert text.startswith(f"{path} is not one of HSNet's split lists (") and "\n" not in text
    assert re.search(message, text), text
