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


def test_split_fractions_must_each_be_in_0_1_and_sum_to_1(tmp_path):
    # a --set merges with the default val: 0.8 + 0.2 + 0.2 must be refused, not renormalised to 67/17/17 %
    with pytest.raises(ConfigError) as exc:
        load_config("bottle", overrides=["convert.split={train: .8, test: .2}"])
    msg = str(exc.value)
    assert msg.startswith("--set convert.split={train: .8, test: .2}: convert.split: ") and "\n" not in msg
    assert "sum to 1 (got 1.2: train 0.8 + val 0.2 + test 0.2)" in msg
    with pytest.raises(ConfigError, match=r"--set convert.split.val=0: convert.split: .*each be in \(0, 1\)"):
        load_config("bottle", overrides=["convert.split={train: 0.9, test: 0.1}", "convert.split.val=0"])
    bad = tmp_path / "split.yaml"
    bad.write_text("convert:\n  split: {train: 1.0, val: 0.0, test: 0.0}\n")
    with pytest.raises(ConfigError, match=r"split.yaml: convert.split: .*each be in \(0, 1\)"):
        load_config("bottle", files=[bad])
    ok = load_config("bottle", overrides=["convert.split={train: 0.7, val: 0.2, test: 0.1}"])  # sums to 0.999…9
    assert (ok.convert.split.train, ok.convert.split.val, ok.convert.split.test) == (0.7, 0.2, 0.1)


def test_unusable_config_files_are_one_line_errors(tmp_path, monkeypatch):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("# réglages\nsynth:\n  size: 64\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte \d+: .*\); save it as UTF-8"):
        load_config("bottle", files=[latin1])
    with pytest.raises(ConfigError, match=r": is a folder, not a config file; pass a YAML file"):
        load_config("bottle", files=[tmp_path])
    locked = tmp_path / "locked.yaml"
    locked.write_text("synth:\n  size: 64\n")

    read_text = type(locked).read_text

    def refuse(self, *args, **kwargs):  # chmod 000 does not stop root, so refuse the read itself
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(type(locked), "read_text", refuse)
    with pytest.raises(ConfigError, match=r"locked.yaml: cannot read \(Permission denied\); check the file's"):
        load_config("bottle", files=[locked])
