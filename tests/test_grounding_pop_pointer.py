"""PartPointer with method "pop" (issue #14): teach a part by example, then point at it.

The shipped tiny-tabletop LLaVA is the MLLM and, through its own vision tower, the dense extractor
(``extractor="llava-tower"``): the extractor available here; DINOv3 is the one for real use
(tests/test_grounding_pop.py covers it on a tiny random DINOv3 checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from part_point_ros.errors import InputError
from part_point_ros.grounding import PartPointer
from part_point_ros.sim import render_scene

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = str(ROOT / "models" / "tiny-tabletop-llava")
HEADS = str(ROOT / "models" / "tiny-tabletop-heads.json")


@pytest.fixture(scope="module")
def rendered():
    return render_scene(3, width=160, height=120)


@pytest.fixture(scope="module")
def scene(rendered):
    return rendered.rgb


def pop_pointer(root, **options):
    return PartPointer.from_pretrained(
        BACKBONE, method="pop", heads=HEADS, extractor="llava-tower", support_root=root, **options
    )


def test_pop_points_at_the_taught_place_and_names_untaught_queries(tmp_path, rendered, scene):
    pointer = pop_pointer(tmp_path)
    assert len(pointer.heads) == 3  # POP fuses the top 3 localization heads
    with pytest.raises(InputError, match=r"no support set for query 'the teapot lid' \(taught: none yet\)"):
        pointer.point(scene, "the teapot lid")
    # taught on the part the query names, as a user would click (its innermost pixel): POP multiplies
    # the example's similarity by the query's attention, and the tower's table tokens all look alike
    lid = next(p for p in rendered.parts if (p.object_type, p.part) == ("teapot", "lid"))
    u, v = map(float, lid.point_2d)
    taught = pointer.teach("the teapot lid", scene, (u, v))
    assert taught.name == "the teapot lid" and len(taught) == 1
    assert (tmp_path / "the teapot lid.json").is_file()
    result = pointer.point(scene, "the teapot lid")  # the taught frame itself
    assert result.method == "pop" and result.found and np.isfinite(result.score)
    cell = 160 / result.grid.cols  # original pixels per feature cell (the tower's grid)
    assert abs(result.x - u) <= 1.5 * cell and abs(result.y - v) <= 1.5 * cell, (result.x, result.y)
    # a second example of the same name extends the set; the next request uses it
    pointer.teach("the teapot lid", np.ascontiguousarray(scene[:, ::-1]), (160 - 1 - u, v))
    assert len(pointer.pointing.supports_for("the teapot lid")) == 2
    described = pointer.describe()
    assert described["method"] == "pop" and described["supports"] == {"the teapot lid": 2}


def test_a_named_support_set_serves_every_query_and_a_store_taught_elsewhere_is_seen(tmp_path, scene):
    teacher = pop_pointer(tmp_path)
    teacher.teach("mug handle", scene, (40.0, 70.0))
    fixed = pop_pointer(tmp_path, support="mug handle")
    assert fixed.point(scene, "anything at all").method == "pop"
    live = pop_pointer(tmp_path)  # reads the store at each request
    teacher.teach("knife blade", scene, (120.0, 30.0))
    assert live.point(scene, "knife blade").found
    with pytest.raises(InputError, match="no support set 'nope'"):
        pop_pointer(tmp_path, support="nope")


def test_support_fusion_reaches_the_method_and_changes_the_k_shot_map(tmp_path, rendered, scene):
    """``support_fusion`` of PartPointer is the method's: with two examples the paper's product and the
    mean give other maps (other scores) on the same store; a one-example set is the same either way;
    an unknown fusion is a one-line InputError."""
    lid = next(p for p in rendered.parts if (p.object_type, p.part) == ("teapot", "lid"))
    u, v = map(float, lid.point_2d)
    pop_pointer(tmp_path).teach("lid", scene, (u, v))
    one = {f: pop_pointer(tmp_path, support_fusion=f).point(scene, "lid") for f in ("product", "mean")}
    assert one["product"].score == pytest.approx(one["mean"].score, rel=1e-5)
    pop_pointer(tmp_path).teach("lid", np.ascontiguousarray(scene[:, ::-1]), (160 - 1 - u, v))
    pointers = {f: pop_pointer(tmp_path, support_fusion=f) for f in ("product", "geomean", "mean")}
    assert {f: p.describe()["support_fusion"] for f, p in pointers.items()} == {f: f for f in pointers}
    two = {f: p.point(scene, "lid") for f, p in pointers.items()}
    assert all(r.found and np.isfinite(r.score) for r in two.values())
    assert two["mean"].score != pytest.approx(two["product"].score, rel=1e-3)
    with pytest.raises(InputError, match="support_fusion must be one of product, geomean, mean"):
        pop_pointer(tmp_path, support_fusion="median")


def test_teach_needs_method_pop(tmp_path, scene):
    pointer = PartPointer.from_pretrained(BACKBONE, method="attention", heads=HEADS)
    with pytest.raises(InputError, match="teach needs method 'pop'"):
        pointer.teach("x", scene, (1.0, 1.0))
    with pytest.raises(InputError, match="outside|inside"):
        pop_pointer(tmp_path).teach("x", scene, (500.0, 1.0))


def test_cli_teach_list_point_and_delete(tmp_path, scene, capsys):
    import cv2

    from part_point_ros.cli.main import main

    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), scene[..., ::-1])
    roots = ["--support-root", str(tmp_path / "sets"), "--extractor", "llava-tower"]
    assert main(["teach", "drill grip", str(image), "--point", "100,60", "--backbone", BACKBONE, *roots]) == 0
    assert "taught 'drill grip': 1 example(s)" in capsys.readouterr().out
    assert main(["teach", "--list", *roots]) == 0
    assert capsys.readouterr().out.startswith("drill grip: 1 example(s), llava-tower:tiny-tabletop-llava")
    argv = ["point", str(image), "drill grip", "--method", "pop", "--backbone", BACKBONE, "--heads", HEADS]
    assert main([*argv, *roots, "--json"]) == 0
    import json

    answer = json.loads(capsys.readouterr().out)
    same = pop_pointer(tmp_path / "sets").point(scene, "drill grip")  # what the Python API answers
    assert answer["method"] == "pop" and (answer["x"], answer["y"]) == pytest.approx((same.x, same.y))
    assert main(["teach", "drill grip", str(image), "--point", "60,40", *roots]) == 0  # a 2nd example
    capsys.readouterr()
    for fusion in ("product", "mean"):
        assert main([*argv, *roots, "--json", "--support-fusion", fusion]) == 0
        answer = json.loads(capsys.readouterr().out)
        same = pop_pointer(tmp_path / "sets", support_fusion=fusion).point(scene, "drill grip")
        assert answer["score"] == pytest.approx(same.score, rel=1e-5), fusion
    assert main([*argv, *roots, "--support-fusion", "median"]) == 1
    assert "support_fusion must be one of product, geomean, mean" in capsys.readouterr().err
    assert main(["teach", "drill grip", str(image), "--point", "100;60", *roots]) == 1
    assert "write the pixel as U,V" in capsys.readouterr().err
    assert main(["teach", "drill grip", "--delete", *roots]) == 0
    assert main([*argv, *roots]) == 1  # nothing taught any more: one line saying so
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (a progress bar before: transformers is
    # imported by the tests already, so the CLI cannot quiet it as it does when run on its own)
    assert err.startswith("part-point: error: ") and "no support set for query 'drill grip'" in err
