"""Your own data (user_coco, user_masks, user_folders): each layout, as the synthetic generator writes
it, builds through the CLI and reads back exactly; splits come from the lists or a seeded draw (held-out
classes disjoint from train); malformed items are all named in one line and nothing is written."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from segic_jax.data import build as build_cli
from segic_jax.data.sources import data_source, decode_gray, decode_image, decode_instances
from segic_jax.data.synthetic import write_user_layouts


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return write_user_layouts(str(tmp_path_factory.mktemp("user_layouts")))


def _build(name, manual_dir, data_dir, *options):
    return build_cli.main([name, "--manual_dir", str(manual_dir), "--data_dir", str(data_dir), *options])


def _read(name, data_dir):
    """{split: [example, ...]} of a built user dataset."""
    return {s: [data_source(name, s, str(data_dir))[i] for i in range(len(data_source(name, s, str(data_dir))))]
            for s in ("train", "test")}


def _file_names(splits):
    return {s: sorted(str(ex["file_name"], "utf-8") if isinstance(ex["file_name"], bytes) else ex["file_name"]
                      for ex in examples) for s, examples in splits.items()}


def _check_image(example, path):
    with open(path, "rb") as f:
        assert bytes(example["image"]) == f.read()
    np.testing.assert_array_equal(decode_image(example["image"]), np.asarray(Image.open(path).convert("RGB")))
    assert (int(example["height"]), int(example["width"])) == Image.open(path).size[::-1]


def test_user_masks_build_and_read_back_exactly(layouts, tmp_path):
    root = layouts["masks"]
    assert _build("user_masks/scenes", root, tmp_path / "data") == 0
    names = open(os.path.join(root, "classes.txt")).read().split("\n")[:-1]
    splits = _read("user_masks/scenes", tmp_path / "data")
    files = _file_names(splits)
    assert len(files["train"]) == 10 and len(files["test"]) == 2  # 20% of 12 held out
    assert set(files["train"]).isdisjoint(files["test"])
    assert sorted(files["train"] + files["test"]) == sorted(f"images/{f}" for f in os.listdir(os.path.join(root, "images")))
    for example in splits["train"] + splits["test"]:
        file_name = example["file_name"].decode() if isinstance(example["file_name"], bytes) else example["file_name"]
        _check_image(example, os.path.join(root, file_name))
        label = np.asarray(Image.open(os.path.join(root, "masks", os.path.basename(file_name))))
        decoded = decode_instances(example)
        present = [int(c) for c in np.unique(label) if 0 < c < 255]
        assert decoded["category_ids"].tolist() == present
        assert decoded["category_names"] == [names[c - 1] for c in present]
        for mask, c in zip(decoded["masks"], present):
            np.testing.assert_array_equal(mask, label == c)  # the ignored (255) top row is in no mask
        assert not decoded["masks"][:, 0].any() and not decoded["iscrowd"].any()
    metadata = build_cli.make_builder("user_masks/scenes", str(tmp_path / "data")).info.metadata
    assert metadata["class_names"] == {str(i + 1): n for i, n in enumerate(names)}


def test_user_coco_build_matches_pycocotools(layouts, tmp_path):
    from pycocotools.coco import COCO

    root = layouts["coco"]
    assert _build("user_coco/scenes", root, tmp_path / "data", "--seed", "3") == 0
    coco = COCO(os.path.join(root, "annotations.json"))
    by_file = {im["file_name"]: im for im in coco.imgs.values()}
    splits = _read("user_coco/scenes", tmp_path / "data")
    files = _file_names(splits)
    assert set(files["train"]).isdisjoint(files["test"]) and len(files["train"] + files["test"]) == 12
    forms = set()
    for example in splits["train"] + splits["test"]:
        file_name = example["file_name"].decode() if isinstance(example["file_name"], bytes) else example["file_name"]
        _check_image(example, os.path.join(root, file_name))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=by_file[os.path.basename(file_name)]["id"]))
        decoded = decode_instances(example)
        np.testing.assert_array_equal(decoded["masks"], np.stack([coco.annToMask(a).astype(bool) for a in anns]))
        assert decoded["category_names"] == [coco.cats[a["category_id"]]["name"] for a in anns]
        assert decoded["category_ids"].tolist() == [a["category_id"] for a in anns]
        assert decoded["iscrowd"].tolist() == [bool(a["iscrowd"]) for a in anns]
        forms |= {type(a["segmentation"]).__name__ + str(a["iscrowd"]) for a in anns}
    assert forms == {"list0", "dict0", "dict1"}  # polygons, compressed RLE and crowd RLE all went through
    # another seed holds out other images
    assert _build("user_coco/reseeded", root, tmp_path / "data") == 0
    assert _file_names(_read("user_coco/reseeded", tmp_path / "data"))["test"] != files["test"]


def test_user_folders_build_and_read_back_exactly(layouts, tmp_path):
    root = layouts["folders"]
    assert _build("user_folders", root, tmp_path / "data") == 0  # the default config: no name given
    classes = sorted(os.listdir(root))
    splits = _read("user_folders", tmp_path / "data")
    files = _file_names(splits)
    assert set(files["train"]).isdisjoint(files["test"])
    assert sorted(files["train"] + files["test"]) == sorted(f"{c}/{f}" for c in classes
                                                            for f in os.listdir(os.path.join(root, c)) if f.endswith(".jpg"))
    for example in splits["train"] + splits["test"]:
        file_name = example["file_name"].decode() if isinstance(example["file_name"], bytes) else example["file_name"]
        _check_image(example, os.path.join(root, file_name))
        decoded = decode_instances(example)
        cls = file_name.split("/")[0]
        assert decoded["category_names"] == [cls] and decoded["category_ids"].tolist() == [classes.index(cls) + 1]
        with open(os.path.join(root, file_name[:-4] + ".png"), "rb") as f:
            np.testing.assert_array_equal(decoded["masks"][0], decode_gray(f.read()) >= 128)


@pytest.mark.parametrize("layout", ["masks", "folders"])
def test_held_out_classes_are_never_in_train(layouts, tmp_path, layout):
    from segic_jax.data import episodes, eval_episodes

    name = f"user_{layout}/unseen"
    assert _build(name, layouts[layout], tmp_path / "data", "--split_by", "classes", "--test_fraction", "0.34") == 0
    splits = _read(name, tmp_path / "data")
    ids = {s: {int(c) for ex in examples for c in ex["objects"]["category_id"]} for s, examples in splits.items()}
    assert len(ids["test"]) == 1 and len(ids["train"]) == 2 and ids["train"].isdisjoint(ids["test"])
    metadata = build_cli.make_builder(name, str(tmp_path / "data")).info.metadata
    assert metadata["test_classes"] == sorted(ids["test"]) and metadata["split_by"] == "classes"
    # every image is kept, in one split; the readers train and evaluate on it as they are
    assert len(splits["train"]) + len(splits["test"]) == 12
    train = data_source(name, "train", str(tmp_path / "data"))
    sample = episodes.InstanceClassSampler(train, 32, 2).sample(np.random.default_rng(0))
    assert sample["class_name"] in metadata["class_names"].values()
    test = data_source(name, "test", str(tmp_path / "data"))
    assert {e.class_id for e in eval_episodes.synthetic(test, episodes=4)} == ids["test"]


def test_split_lists_are_followed(layouts, tmp_path):
    import shutil

    root = tmp_path / "masks"
    shutil.copytree(layouts["masks"], root)
    (root / "train.txt").write_text("scene_00\nscene_01\nscene_02\n\nscene_05\n")
    (root / "test.txt").write_text("scene_03\nscene_04\n")
    assert _build("user_masks/listed", root, tmp_path / "data") == 0
    files = _file_names(_read("user_masks/listed", tmp_path / "data"))
    assert files == {"train": [f"images/scene_0{i}.png" for i in (0, 1, 2, 5)],
                     "test": ["images/scene_03.png", "images/scene_04.png"]}


def test_malformed_items_are_all_named_before_anything_is_written(layouts, tmp_path, capsys):
    import shutil

    root = tmp_path / "masks"
    shutil.copytree(layouts["masks"], root)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "masks" / "scene_01.png")  # size differs
    label = np.asarray(Image.open(root / "masks" / "scene_02.png")).copy()
    label[5, 5] = 9
    Image.fromarray(label).save(root / "masks" / "scene_02.png")  # class 9 of 3
    Image.fromarray(np.full((48, 48), 255, np.uint8)).save(root / "masks" / "scene_03.png")  # all ignored: empty
    (root / "images" / "scene_04.png").write_bytes(b"not an image")  # unreadable
    os.remove(root / "masks" / "scene_05.png")  # a stem without its mask
    shutil.copy(root / "masks" / "scene_06.png", root / "masks" / "stray.png")  # a mask without its image
    data_dir = tmp_path / "data"
    assert _build("user_masks/broken", root, data_dir) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "6 malformed items" in err
    for culprit in ("masks/scene_01.png is 12x10", "masks/scene_02.png has class indices [9]", "masks/scene_03.png is empty",
                    "images/scene_04.png", "images/scene_05.png has no mask", "masks/stray.png has no image"):
        assert culprit in err, culprit
    assert not data_dir.exists()  # nothing written, not even the dataset's lock folder

    coco = tmp_path / "coco"
    shutil.copytree(layouts["coco"], coco)
    data = json.loads((coco / "annotations.json").read_text())
    data["annotations"][0]["category_id"] = 999
    data["annotations"][1]["segmentation"] = [[1, 1, 1, 1, 1, 1]]  # a polygon with no area: empty mask
    data["images"][2]["width"] = 50
    (coco / "annotations.json").write_text(json.dumps(data))
    assert _build("user_coco/broken", coco, data_dir) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "3 malformed items" in err
    assert "annotation 1 has unknown category 999" in err and "annotation 2 of scene_01.png: empty mask" in err
    assert "images/scene_02.png is 48x48 but" in err
    assert not data_dir.exists()

    folders = tmp_path / "folders"
    shutil.copytree(layouts["folders"], folders)
    cls = sorted(os.listdir(folders))
    os.remove(folders / cls[0] / "2.png")  # an image without its mask
    os.remove(folders / cls[1] / "1.jpg")  # a mask without its image
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(folders / cls[1] / "3.png")  # empty
    Image.fromarray(np.full((20, 48), 255, np.uint8)).save(folders / cls[2] / "4.png")  # size differs
    (folders / cls[2] / "2.jpg").write_bytes(b"\xff\xd8 truncated")  # unreadable
    assert _build("user_folders/broken", folders, data_dir, "--split_by", "classes") == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "5 malformed items" in err
    for culprit in (f"{cls[0]}/2.jpg has no mask", f"{cls[1]}/1.png has no image", f"{cls[1]}/3.png is empty",
                    f"{cls[2]}/4.png is 48x20", f"{cls[2]}/2.jpg as an image"):
        assert culprit in err, culprit
    assert not data_dir.exists()


def test_held_out_layouts_show_only_classes_the_synthetic_train_split_never_shows(tmp_path):
    from segic_jax.data.synthetic import all_classes, class_split

    folder = write_user_layouts(str(tmp_path), n_classes=2, images_per_class=2, size=32, held_out=True)["masks"]
    names = open(os.path.join(folder, "classes.txt")).read().split("\n")[:-1]
    unseen = [c.name for c in all_classes() if class_split(c) == "test"]
    assert names == unseen[:2]
    with pytest.raises(ValueError, match=r"holds out 24 classes, not 25"):
        write_user_layouts(str(tmp_path / "more"), n_classes=25, held_out=True)
