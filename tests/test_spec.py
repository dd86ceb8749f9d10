import pytest

from beton_builders import load_spec
from beton_builders.poison import place, select_poison
from beton_builders.sources import resolve_class
from beton_builders.spec import AttackSpec, TriggerSpec
from fastbd.config import ConfigError
import numpy as np


def test_defaults_follow_the_paper():
    s = load_spec()
    assert s.trigger.width == 50 and s.trigger.alpha == 1.0
    assert (s.trigger.train_min, s.trigger.train_max, s.trigger.val_min, s.trigger.val_max) == (0.25, 0.75, 0.10, 0.90)
    assert s.attack.rates == [0.5] and s.attack.rate_mode == "target_fraction"
    assert (s.storage.val_resize, s.storage.val_crop) == (256, 224)


def test_unknown_key_is_rejected_with_its_name(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("trigger:\n  widht: 40\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*widht"):
        load_spec(p)
    with pytest.raises(ConfigError, match="nosuch"):
        load_spec(None, ["attack.nosuch=1"])


@pytest.mark.parametrize("override,field", [
    ("attack.rates=[1.5]", "attack.rates"),
    ("attack.rates=[-0.1]", "attack.rates"),
    ("attack.rates=[0.1,0.1]", "attack.rates"),
    ("attack.rate_mode=half", "attack.rate_mode"),
    ("trigger.alpha=0", "trigger.alpha"),
    ("trigger.train_min=0.8", "trigger.train_min"),
    ("trigger.location=corner", "trigger.location"),
    ("storage.jpeg_quality=101", "storage.jpeg_quality"),
    ("storage.on_error=ignore", "storage.on_error"),
    ("source.kind=imagenet", "source.kind"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_spec(None, [override])


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigError, match="trigger.width"):
        load_spec(None, ["trigger.width=wide"])


def test_missing_trigger_file():
    with pytest.raises(ConfigError, match="trigger.path.*not found: /no/such.png"):
        load_spec(None, ["trigger.kind=image", "trigger.path=/no/such.png"])


def test_untargeted_needs_absolute_rate_mode():
    with pytest.raises(ConfigError, match="attack.rate_mode"):
        load_spec(None, ["attack.targeted=false"])
    load_spec(None, ["attack.targeted=false", "attack.rate_mode=dataset_fraction", "attack.rates=[0.01]"])


def test_unknown_target_suggests_close_names():
    classes = ["n01558993", "n01692333", "n01729322"]
    assert resolve_class(classes, "n01692333") == 1 and resolve_class(classes, "2") == 2
    with pytest.raises(ConfigError, match="did you mean n01692333"):
        resolve_class(classes, "n01692334")
    with pytest.raises(ConfigError, match="index 7"):
        resolve_class(classes, "7")


def test_selection_is_nested_and_seeded():
    labels = np.repeat(np.arange(5), 40)
    ok = np.ones(len(labels), bool)
    a = AttackSpec(target="2", rates=[0.5, 0.1, 0.25])
    chosen, rates = select_poison(labels, ok, a, 2, seed=3)
    assert [r["count"] for r in rates] == [4, 10, 20]  # int(rate * 40), sorted by count
    assert len(chosen) == 20 and set(labels[chosen]) == {2}
    again, _ = select_poison(labels, ok, a, 2, seed=3)
    assert (chosen == again).all()
    other, _ = select_poison(labels, ok, a, 2, seed=4)
    assert set(other) != set(chosen)
    with pytest.raises(ConfigError, match="asks for 41"):
        select_poison(labels, ok, AttackSpec(target="2", rate_mode="count", rates=[41]), 2, 0)


def test_random_placement_stays_inside_the_band():
    t = TriggerSpec()
    rng = np.random.default_rng(0)
    for _ in range(500):
        x, y = place(rng, 500, 375, 50, 50, t, 0.25, 0.75)
        assert 125 <= x and x + 50 <= 375 and 93 <= y and y + 50 <= 281
    # reference rule when the band is narrower than the trigger: start at int(W*min)
    assert place(rng, 60, 60, 40, 40, t, 0.25, 0.75) == (15, 15)
