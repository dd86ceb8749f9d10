import numpy as np
from typer.testing import CliRunner

from beton_builders.synthetic import class_names, render, render_jpeg
from fastbd.cli import app


def test_synthetic_images_are_deterministic_and_sized():
    a = render_jpeg(0, "train", 5, 5, 10, 64, 48, 0.0, 90)
    assert a == render_jpeg(0, "train", 5, 5, 10, 64, 48, 0.0, 90)
    assert a != render_jpeg(1, "train", 5, 5, 10, 64, 48, 0.0, 90)
    assert render(0, "val", 3, 3, 10, 64, 48, 0.0).shape == (48, 64, 3)
    sizes = {render(0, "train", i, 0, 10, 100, 80, 0.2).shape[:2] for i in range(10)}
    assert len(sizes) > 1 and all(80 <= w <= 120 and 64 <= h <= 96 for h, w in sizes)


def test_synthetic_classes_have_structure():
    """Nearest class mean on the hue histogram of saturated pixels (the foreground) beats chance by far."""
    from PIL import Image

    def feat(img):
        hsv = np.asarray(Image.fromarray(img).convert("HSV")).reshape(-1, 3)
        hue = hsv[hsv[:, 1] > 140, 0] // 16
        h = np.bincount(hue, minlength=16).astype(float)
        return h / max(h.sum(), 1)

    k = 6
    train = [(feat(render(0, "train", i, i % k, k, 48, 48, 0)), i % k) for i in range(k * 12)]
    test = [(feat(render(0, "val", i, i % k, k, 48, 48, 0)), i % k) for i in range(k * 6)]
    means = np.stack([np.mean([f for f, y in train if y == c], 0) for c in range(k)])
    acc = np.mean([np.argmin(((means - f) ** 2).sum(1)) == y for f, y in test])
    assert acc > 2.5 / k
    assert class_names(3) == sorted(class_names(3))


def test_make_synthetic_writes_an_imagefolder(tmp_path):
    r = CliRunner().invoke(app, ["make-synthetic", "--out", str(tmp_path / "s"), "source.synthetic.num_classes=3",
                                 "source.synthetic.train_per_class=2", "source.synthetic.val_per_class=1",
                                 "workers=1"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "s" / "train").rglob("*.jpg"))) == 6
    assert sorted(p.name for p in (tmp_path / "s" / "val").iterdir()) == class_names(3)


def test_background_saturation_and_object_size_knobs():
    from PIL import Image

    def sat(img):
        return np.asarray(Image.fromarray(img).convert("HSV"))[..., 1] / 255.0

    grey_bg = render(0, "train", 7, 2, 10, 64, 64, 0.0, background_saturation=0.0, object_size=(0.1, 0.1))
    colour_bg = render(0, "train", 7, 2, 10, 64, 64, 0.0, background_saturation=1.0, object_size=(0.1, 0.1))
    assert (sat(grey_bg) < 0.1).mean() > 0.85  # only the small object is coloured
    assert sat(colour_bg).mean() > sat(grey_bg).mean()
    big = render(0, "train", 7, 2, 10, 64, 64, 0.0, background_saturation=0.0, object_size=(0.3, 0.3))
    assert (sat(big) > 0.3).sum() > 3 * (sat(grey_bg) > 0.3).sum()


def test_distractors_add_clutter_and_leave_the_default_bytes_alone():
    """`distractors` draws from its own RNG stream: 0 gives the generator's bytes, and the class object, the
    background and the noise are the same draws with it (only the clutter's pixels differ)."""
    from PIL import Image

    from beton_builders.synthetic import backdrop

    base = render(0, "train", 7, 2, 10, 96, 96, 0.0)
    assert (render(0, "train", 7, 2, 10, 96, 96, 0.0, distractors=0) == base).all()
    clutter = render(0, "train", 7, 2, 10, 96, 96, 0.0, distractors=4)
    assert (clutter == render(0, "train", 7, 2, 10, 96, 96, 0.0, distractors=4)).all()
    changed = np.abs(clutter.astype(int) - base.astype(int)).max(2) > 40
    assert 0.02 < changed.mean() < 0.5  # small objects, not a new image
    sat = np.asarray(Image.fromarray(clutter).convert("HSV"))[..., 1]
    assert (sat[changed] > 90).mean() > 0.5  # they are coloured, unlike the background
    assert (backdrop(0, 3, 64, 64, 0.15, 0) == backdrop(0, 3, 64, 64)).all()
    assert (backdrop(0, 3, 64, 64, 0.15, 3) != backdrop(0, 3, 64, 64)).any()


def test_distractors_out_of_range_is_a_field_error(tmp_path):
    r = CliRunner().invoke(app, ["make-synthetic", "--out", str(tmp_path / "s"), "source.synthetic.distractors=-1"])
    assert r.exit_code == 2
    assert "source.synthetic.distractors" in r.output


def object_hue(img: np.ndarray) -> float:
    """The hue (turns) of the most saturated pixels: the class object on a low-saturation background."""
    from PIL import Image

    hsv = np.asarray(Image.fromarray(img).convert("HSV")).reshape(-1, 3).astype(float)
    top = hsv[hsv[:, 1] >= np.quantile(hsv[:, 1], 0.95)]
    return float(np.angle(np.exp(2j * np.pi * top[:, 0] / 255).mean()) / (2 * np.pi) % 1.0)


def test_hue_spread_makes_classes_share_colours_and_its_default_keeps_the_bytes():
    """`hue_spread` only widens the normal draw the object's hue always had: 0.02 is the generator's own
    images; at 0.5 the objects of one class take hues from all round the colour circle, the rest unchanged."""
    from beton_builders.synthetic import HUE_SPREAD, cutout

    assert HUE_SPREAD == 0.02
    for i in range(3):
        assert (render(0, "train", i, 2, 10, 64, 64, 0.0, hue_spread=0.02) == render(0, "train", i, 2, 10, 64, 64, 0.0)).all()
    assert (cutout(0, 1, 3, 10, 64, hue_spread=0.02)[0] == cutout(0, 1, 3, 10, 64)[0]).all()

    def spread(hs):  # circular spread of one class's object hues over 40 images: 0 one hue, 1 uniform
        h = np.array([object_hue(render(0, "train", i, 2, 10, 64, 64, 0.0, hue_spread=hs)) for i in range(40)])
        return 1 - abs(np.exp(2j * np.pi * h).mean())
    assert spread(0.02) < 0.05 and spread(0.5) > 0.6
    a, b = render(0, "train", 4, 2, 10, 64, 64, 0.0), render(0, "train", 4, 2, 10, 64, 64, 0.0, hue_spread=0.5)
    assert 0.02 < (np.abs(a.astype(int) - b.astype(int)).max(2) > 40).mean() < 0.5  # the object, not the scene


def test_hue_spread_out_of_range_is_a_field_error(tmp_path):
    r = CliRunner().invoke(app, ["make-synthetic", "--out", str(tmp_path / "s"), "source.synthetic.hue_spread=1.5"])
    assert r.exit_code == 2
    assert "source.synthetic.hue_spread" in r.output


def test_shared_hues_give_every_class_the_same_colours_from_their_own_stream():
    """`shared_hues=K`: the object's hue is one of K hues that all classes share, drawn from the image's own
    stream (0 keeps the class hue and every byte); the scene and the object's place do not change."""
    from beton_builders.synthetic import cutout

    a = render(0, "train", 4, 2, 10, 64, 64, 0.0)
    assert (render(0, "train", 4, 2, 10, 64, 64, 0.0, shared_hues=0) == a).all()
    one = [object_hue(render(0, "train", i, c, 10, 64, 64, 0.0, shared_hues=1)) for c in range(10) for i in (c, c + 10)]
    assert max(abs(h - 0.5) for h in one) < 0.08  # all ten classes in the one hue (0.5; the class hues are 0.1 apart)
    two = {round(object_hue(render(0, "train", i, 3, 10, 64, 64, 0.0, shared_hues=2)) * 4) % 4 for i in range(3, 200, 10)}
    assert two == {1, 3}  # hues 0.25 and 0.75, both drawn for one class
    b = render(0, "train", 4, 2, 10, 64, 64, 0.0, shared_hues=1)
    assert 0.02 < (np.abs(a.astype(int) - b.astype(int)).max(2) > 40).mean() < 0.5  # the object, not the scene
    assert (cutout(0, 1, 3, 10, 64, shared_hues=0)[1] == cutout(0, 1, 3, 10, 64, shared_hues=1)[1]).all()
    assert abs(object_hue(cutout(0, 1, 3, 10, 64, shared_hues=1)[0]) - 0.5) < 0.04


def test_shared_hues_out_of_range_is_a_field_error(tmp_path):
    r = CliRunner().invoke(app, ["make-synthetic", "--out", str(tmp_path / "s"), "source.synthetic.shared_hues=-2"])
    assert r.exit_code == 2
    assert "source.synthetic.shared_hues" in r.output


def test_subtypes_give_each_class_several_looks_that_no_other_class_shows():
    """`subtypes=K`: an image shows one of its class's K looks (a shape, hue and texture of a 10 x K set),
    drawn from its own stream; 1 keeps every byte; the looks of different classes are disjoint."""
    from beton_builders.synthetic import _class_look, cutout

    a = render(0, "train", 4, 2, 10, 64, 64, 0.0)
    assert (render(0, "train", 4, 2, 10, 64, 64, 0.0, subtypes=1) == a).all()
    assert (cutout(0, 1, 3, 10, 64, subtypes=1)[0] == cutout(0, 1, 3, 10, 64)[0]).all()
    looks = {c: {_class_look(c, 10, 4, [0, 0, i]) for i in range(200)} for c in range(10)}
    assert all(len(v) == 4 for v in looks.values())  # every look of every class is drawn
    pairs = [(shape, round(hue, 1) % 1.0) for v in looks.values() for shape, hue, _, _ in v]
    assert len(set(pairs)) == 40  # 40 distinct shape-and-colour looks, none shared by two classes
    hues = {round(object_hue(render(0, "train", i, 3, 10, 64, 64, 0.0, subtypes=4)) * 10) % 10 for i in range(3, 400, 10)}
    assert len(hues) >= 3  # one class, several colours
    b = render(0, "train", 4, 2, 10, 64, 64, 0.0, subtypes=4)
    assert (b == render(0, "train", 4, 2, 10, 64, 64, 0.0, subtypes=4)).all()


def test_subtypes_out_of_range_is_a_field_error(tmp_path):
    r = CliRunner().invoke(app, ["make-synthetic", "--out", str(tmp_path / "s"), "source.synthetic.subtypes=0"])
    assert r.exit_code == 2
    assert "source.synthetic.subtypes" in r.output
