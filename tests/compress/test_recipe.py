"""Recipe loading: every shipped recipe loads; bad fields raise RecipeError naming the field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from compress.config import Recipe, load_recipe, recipe_from_dict
from edge_sdk.errors import RecipeError

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yml"))


def test_the_shipped_recipes_are_there() -> None:
    names = {p.stem for p in RECIPES}
    for size in (608, 416, 320):
        assert "yolov3_darknet53_{}".format(size) in names
        assert "yolov3_mobilenet_v1_{}".format(size) in names
    assert "demo" in names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_loads(path: Path) -> None:
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.sha256 and recipe.source == str(path)
    assert recipe.model.input_size % 32 == 0
    # What was written is what was read: nothing silently defaulted away.
    written = yaml.safe_load(path.read_text())
    assert recipe.to_dict()["train"]["epochs"] == written["train"]["epochs"]
    assert recipe_from_dict(recipe.to_dict()) == recipe.__class__(**{**recipe.__dict__, "source": "", "sha256": ""})


def test_workstation_recipes_use_gpu_settings() -> None:
    for path in RECIPES:
        if path.stem == "demo":
            continue
        r = load_recipe(path)
        assert r.train.batch_size == 8 and r.train.amp and r.train.ema and r.train.freeze_backbone_epochs == 10
        assert r.train.schedule == "piecewise" and r.train.optimizer == "momentum" and r.train.lr == 0.001
        assert r.train.multi_scale and r.model.input_size in r.train.multi_scale


@pytest.mark.parametrize(
    "document, message",
    [
        ({"train": {"epochs": "ten"}}, "train.epochs: expected an integer >= 1, got 'ten'"),
        ({"train": {"epochs": 0}}, "train.epochs: expected an integer >= 1, got 0"),
        ({"train": {"batch_size": 2.5}}, "train.batch_size: expected an integer >= 1, got 2.5"),
        ({"train": {"lerning_rate": 0.1}}, "train.lerning_rate: unknown field (did you mean 'lr'?)"),
        ({"trian": {}}, "trian: unknown field (did you mean 'train'?)"),
        (
            {"model": {"arch": "mobilenetv1"}},
            "model.arch: expected one of mobilenet_v1, darknet53, mobilenet_v3_large, got 'mobilenetv1' (did you mean 'mobilenet_v1'?)",
        ),
        (
            {"model": {"input_size": 100}},
            "model.input_size: expected an integer between 32 and 4096 and a multiple of 32, got 100",
        ),
        ({"model": {"anchors": [[1, 2]]}}, "model.anchors: expected nine [w, h] pairs"),
        ({"model": {"anchors": "kmeans"}}, "model.anchors: expected null, 'auto' or nine [w, h] pairs"),
        ({"train": {"optimizer": "sgd"}}, "train.optimizer: expected one of momentum, adamw, got 'sgd'"),
        ({"train": {"schedule": "cosin"}}, "(did you mean 'cosine'?)"),
        (
            {"train": {"multi_scale": [320, 330]}},
            "train.multi_scale[1]: expected an integer between 32 and 4096 and a multiple of 32, got 330",
        ),
        ({"train": {"augment": {"flip": "yes"}}}, "train.augment.flip: expected true or false, got 'yes'"),
        ({"train": {"augment": {"mixup_epochs": 500}}}, "train.augment.mixup_epochs: expected at most train.epochs"),
        ({"train": {"ema_decay": 1.5}}, "train.ema_decay: expected a number between 0.0 and 1.0, got 1.5"),
        ({"train": {"milestones": [10, 5]}}, "train.milestones: expected increasing epochs"),
        ({"train": "fast"}, "train: expected a mapping of fields, got 'fast'"),
        ({"export": {"postprocess": {"nms_iou": "high"}}}, "export.postprocess.nms_iou: expected a number"),
        (
            {"stages": ["train", "prnue"]},
            "stages[1]: expected one of train, prune, distill, int8, export, got 'prnue' (did you mean 'prune'?)",
        ),
        ({"data": {"size": [16, 16]}}, "data.size: expected [width, height] of at least 32 pixels"),
        ({"data": {"size": [99999, 64]}}, "data.size[0]: expected an integer <= 4096, got 99999"),
        ({"data": {"images": 10**23}}, "data.images: expected an integer between 2 and 100000"),
        ({"model": {"input_size": 999999968}}, "model.input_size: expected an integer between 32 and 4096"),
        ({"train": {"multi_scale": [320, 8192]}}, "train.multi_scale[1]: expected an integer between 32 and 4096"),
        ({"train": {"lr": float("nan")}}, "train.lr: expected a number >= 0.0, got nan"),
        ({"export": {"postprocess": {"keep_top_k": 10**9}}}, "export.postprocess.keep_top_k: expected an integer"),
        ([1, 2], "recipe: expected a mapping of fields"),
    ],
)
def test_bad_fields_are_named(document, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(document)
    assert message in str(info.value)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("train:\n  epochs: ten\n")
    with pytest.raises(RecipeError, match=r"^bad.yml: train.epochs: expected an integer >= 1, got 'ten'$"):
        load_recipe(bad)
    broken = tmp_path / "broken.yml"
    broken.write_text("train: [\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(broken)
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.yml")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "---\n", "{}\n"])
def test_a_recipe_that_sets_nothing_is_refused(tmp_path: Path, text: str) -> None:
    empty = tmp_path / "empty.yml"
    empty.write_text(text)
    with pytest.raises(RecipeError, match="sets no fields"):
        load_recipe(empty)


def test_defaults_follow_paddledetection_but_sort_fewer_nms_candidates() -> None:
    from compress.export import EXPORT_POSTPROCESS

    r = recipe_from_dict({})
    assert r.export.postprocess.conf_threshold == 0.005 and r.export.postprocess.nms_iou == 0.45
    assert r.export.postprocess.nms_top_k == 100 and r.export.postprocess.keep_top_k == 100
    assert dataclasses.asdict(r.export.postprocess) == dataclasses.asdict(EXPORT_POSTPROCESS)
    assert r.train.loss.ignore_thresh == 0.7 and r.stages == ["train", "export"]
