"""One definition per setting: the schema, config.yaml, the configuration docs, the CLI options and the README's
stage table all follow from the settings dataclasses of the stage registry."""

from __future__ import annotations

import dataclasses

import jsonschema
import pytest
import yaml

from pseudomask.cli import build_parser
from pseudomask.config import (DOCS_INDEX, README_FILE, SCHEMA_FILE, docs_stage_index, SECTIONS, Resources, complete_config,
                                      default_config, generated_files, readme_with_table, stage_settings)
from pseudomask.settings import SettingsError, defaults, option
from pseudomask.registry import STAGES

from conftest import REPO


def test_generated_files_are_up_to_date():
    for rel, text in generated_files().items():
        assert (REPO / rel).read_text() == text, f"{rel} is stale: run `python -m pseudomask.config`"
    readme = (REPO / README_FILE).read_text()
    assert readme_with_table(readme, REPO) == readme, "README's stage table is stale"
    index = (REPO / DOCS_INDEX).read_text()
    assert readme_with_table(index, REPO, docs_stage_index()) == index, "docs/README.md's stage list is stale"
    assert "<!-- stage-table: generated -->" in readme


def _schema() -> dict:
    return yaml.safe_load((REPO / SCHEMA_FILE).read_text())


def test_every_dataclass_default_is_the_schema_default():
    props = _schema()["properties"]
    for name, cls in {**SECTIONS, **{n: s.settings_class() for n, s in STAGES.items()}}.items():
        section = props[name]
        assert section["additionalProperties"] is False, name
        for key, value in defaults(cls).items():
            assert section["properties"][key]["default"] == value, f"{name}.{key}"
            assert section["properties"][key]["description"], f"{name}.{key} has no help"
        if name in STAGES:
            res = section["properties"]["resources"]["properties"]
            want = {**defaults(Resources), **STAGES[name].resources}
            assert {k: v["default"] for k, v in res.items()} == want, name


def test_config_yaml_is_valid_and_complete():
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    assert complete_config(cfg) == cfg  # every key is written out
    jsonschema.validate(cfg, _schema())
    jsonschema.validate(default_config(), _schema())


def _misspelt(key: str) -> str:
    return key[:-1] if len(key) > 3 else key + "x"


@pytest.mark.parametrize("section", list(default_config()))
def test_a_misspelt_key_is_rejected_with_its_name_and_the_closest_key(section):
    base = default_config()
    if not isinstance(base[section], dict):  # a top-level key
        bad = _misspelt(section)
        with pytest.raises(SettingsError, match=rf"config: unknown key '{bad}' \(did you mean '{section}'\?\)"):
            complete_config({bad: base[section]})
        return
    key = next(iter(base[section]))
    bad = _misspelt(key)
    with pytest.raises(SettingsError, match=rf"^{section}: unknown key '{bad}' \(did you mean '{key}'\?\)"):
        complete_config({section: {bad: base[section][key]}})
    with pytest.raises(jsonschema.ValidationError, match=bad):
        jsonschema.validate({**base, section: {**base[section], bad: 1}}, _schema())
    if section in STAGES:
        with pytest.raises(SettingsError, match=rf"^{section}.resources: unknown key 'thread' \(did you mean"):
            complete_config({section: {"resources": {"thread": 2}}})


def test_misspelt_top_level_section_and_bad_values_are_named():
    with pytest.raises(SettingsError, match=r"config: unknown key 'grabcutt' \(did you mean 'grabcut'\?\)"):
        complete_config({"grabcutt": {}})
    with pytest.raises(SettingsError, match=r"grabcut.iterations: expected integer, got 'five'"):
        complete_config({"grabcut": {"iterations": "five"}})
    with pytest.raises(SettingsError, match=r"validity.min_iou: must be <= 1, got 1.5"):
        complete_config({"validity": {"min_iou": 1.5}})
    with pytest.raises(SettingsError, match=r"workflow.merge_drop_source: must be one of .*'agree'.*got 'agreement'"):
        complete_config({"workflow": {"merge_drop_source": "agreement"}})
    with pytest.raises(SettingsError, match=r"boxcaseg_train.cpu: unknown key 'itres' \(did you mean 'iters'\?\)"):
        complete_config({"boxcaseg_train": {"cpu": {"itres": 5}}})
    assert complete_config({"grabcut": {"iterations": 3}})["grabcut"]["iterations"] == 3


def test_every_stage_has_a_cli_with_one_option_per_setting_and_port():
    parser = build_parser()  # a port named like a setting would clash here
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, stage in STAGES.items():
        p = sub.choices[stage.command]
        opts = {s for a in p._actions for s in a.option_strings}
        for f in dataclasses.fields(stage.settings_class()):
            assert option(f.name) in opts or f"--no-{f.name.replace('_', '-')}" in opts, (name, f.name)
        for port in stage.inputs + stage.outputs:
            assert option(port.name) in opts, (name, port.name)


def test_the_cli_and_the_rule_resolve_the_same_settings():
    """With no options the CLI runs a stage with the settings its rule gets from the default config."""
    cfg = default_config()
    for name, stage in STAGES.items():
        assert stage.resolve({}) == stage.resolve(stage_settings(cfg, name)), name


def test_explicit_options_win_over_the_cpu_profile():
    stage = STAGES["boxcaseg_train"]
    cpu = stage.resolve({"device": "cpu"})
    assert cpu.iters == 400 and cpu.crop_size == 64 and cpu.cpu == {}  # the profile applied
    assert stage.resolve({"device": "cpu"}, {"iters": 7}).iters == 7
    assert stage.resolve({"device": "cpu", "cpu": {"iters": 9}}).iters == 9
    assert stage.resolve({"device": "cpu", "cpu": {}}).iters == 20000


def test_the_slurm_profile_asks_a_gpu_for_every_gpu_stage():
    import os

    from pseudomask.registry import RULE_ALIASES
    from test_slurm import _profile

    gpu = {n for n, s in STAGES.items() if s.gpu} | {r for r, n in RULE_ALIASES.items() if STAGES[n].gpu}
    assert set(_profile(dict(os.environ))["set-resources"]) == gpu


def test_every_rule_runs_a_stage_of_the_registry_or_an_alias_of_one():
    import re

    from pseudomask.registry import RULE_ALIASES, STAGES, gpu_rules, rule_stage

    rules = {m.group(1) for f in (REPO / "rules").glob("*.smk")
             for m in re.finditer(r"^(?:rule|checkpoint) (\w+):", f.read_text(), re.M)}
    assert rules == set(STAGES) | set(RULE_ALIASES)
    assert rule_stage("round_retrain") is STAGES["retrain"]
    assert {"retrain", "round_retrain", "round_predict", "round_predict_train"} <= set(gpu_rules())
    assert "round_merge_drop" not in gpu_rules()


def test_the_hdf5_docs_list_the_columns_of_every_mask_stage():
    from pseudomask.registry import mask_stages

    table = (REPO / "docs" / "hdf5.md").read_text()
    for name in ("ingest", *mask_stages()):
        assert f"| [{name}](stages/{name}.md) |" in table, name
