import pytest

from pipeline.config import CONFIG_DIR, load_config, parse_override
from pipeline.errors import ConfigError


def test_defaults_and_category_layer():
    cfg = load_config("bottle")
    assert cfg.category == "bottle"
    assert cfg.device == "auto" and cfg.allow_random_init is False
    assert cfg.synth.size == 256
    # configs/bottle.yaml supplies prompts for exactly the three bottle defects
    assert set(cfg.classes) == {"broken_large", "broken_small", "contamination"}
    assert all(isinstance(p, str) and p for ps in cfg.classes.values() for p in ps)


def test_category_without_file_gets_empty_prompts():
    assert load_config("screw").classes == {}


def test_profile_and_overrides_win_in_order(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("synth:\n  size: 80\n  seed: 5\n")
    cfg = load_config("bottle", profile="tiny", files=[extra], overrides=["synth.size=72", "device=cpu"])
    assert cfg.synth.size == 72  # --set beats the file
    assert cfg.synth.seed == 5  # the file beats the default
    assert cfg.synth.train_good == 12  # the profile beats the default
    assert cfg.allow_random_init is True


def test_override_values_are_parsed_as_yaml():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("x=true") == (["x"], True)
    assert parse_override("x=[a, b]") == (["x"], ["a", "b"])
    assert parse_override("x=0.5") == (["x"], 0.5)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("novalue")


def test_unknown_key_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("synth:\n  sizee: 10\n")
    with pytest.raises(ConfigError) as exc:
        load_config("bottle", files=[bad])
    msg = str(exc.value)
    assert str(bad) in msg and "synth.sizee" in msg and "unknown key" in msg
    assert "\n" not in msg


def test_unknown_key_from_cli_names_the_override():
    with pytest.raises(ConfigError, match=r"--set synt.size=3: synt: unknown key"):
        load_config("bottle", overrides=["synt.size=3"])


def test_wrong_type_names_key_and_value(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("synth:\n  size: big\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: synth.size: .*integer.*'big'"):
        load_config("bottle", files=[bad])
    with pytest.raises(ConfigError, match="synth.size"):
        load_config("bottle", overrides=["synth.size=8"])  # below the bound of 32
    with pytest.raises(ConfigError, match="allow_random_init"):
        load_config("bottle", overrides=["allow_random_init=maybe"])


def test_bad_device_is_rejected():
    with pytest.raises(ConfigError, match="device"):
        load_config("bottle", overrides=["device=gpu9"])
    assert load_config("bottle", overrides=["device=0,1"]).device == "0,1"


def test_missing_file_and_profile(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config("bottle", files=[tmp_path / "nope.yaml"])
    with pytest.raises(ConfigError, match="no such profile 'huge'"):
        load_config("bottle", profile="huge")


def test_invalid_yaml_names_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("synth:\n  size: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: not valid YAML"):
        load_config("bottle", files=[bad])


def test_every_shipped_config_validates():
    for profile in sorted(p.stem for p in (CONFIG_DIR / "profiles").glob("*.yaml")):
        load_config("bottle", profile=profile)
    for f in CONFIG_DIR.glob("*.yaml"):
        if f.stem != "default":
            load_config(f.stem)
