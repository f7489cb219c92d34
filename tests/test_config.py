"""One definition per setting: the schema, config.yaml, the configuration docs, the CLI options and the README's
stage table all follow from the settings dataclasses of the stage registry; every rule's stage, threads and
resources (a GPU for the GPU stages) follow from the registry and the config."""

from __future__ import annotations

import dataclasses

import jsonschema
import pytest
import yaml

from pseudomask.cli import build_parser
from pseudomask.config import (DOCS_INDEX, README_FILE, SCHEMA_FILE, docs_stage_index, SECTIONS, complete_config,
                                      resources_class, default_config, generated_files, gpu_rules, readme_with_table, stage_settings,
                                      stage_table, workflow_rules)
from pseudomask.settings import SettingsError, defaults, option
from pseudomask.registry import STAGES, mask_stages

from conftest import REPO
from workflow_run import rule_declarations


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
            want = {**defaults(resources_class(STAGES[name])), **STAGES[name].resources}
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


def test_every_stage_settings_class_is_named_after_the_stage():
    """<Stage>Settings: the stage's name in CamelCase (a capital at least where each word starts, e.g.
    GrabCutSettings); the one exception is the evaluate_* family, which shares EvaluateSettings."""
    for name, stage in STAGES.items():
        want = "".join(w.capitalize() for w in name.split("_")) + "Settings"
        if name.startswith("evaluate_"):
            want = "EvaluateSettings"
        got = stage.settings_class().__name__
        assert got.lower() == want.lower() and all(got[i].isupper() for i, c in enumerate(want) if c.isupper()), \
            (name, got, want)


def _rules() -> dict[str, dict]:
    """Snakemake's view of every rule of the workflow but `all`."""
    return {n: r for n, r in rule_declarations().items() if n != "all"}


def test_every_rule_runs_a_stage_with_that_stages_threads_and_resources():
    """Every rule names a stage of the registry in its params; its threads, mem_mb and runtime are that stage's
    config resources, and it asks for gpu=1 exactly when the registry marks the stage as a GPU stage; the
    rules files read the same (config.workflow_rules, what the Slurm profile's GPU list and the README's
    stage table come from)."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    read = workflow_rules(REPO)
    assert set(read) == set(_rules())
    for name, rule in _rules().items():
        stage = rule["stage"]
        assert stage in STAGES and read[name].stage == stage, (name, stage, read[name])
        res = cfg[stage]["resources"]
        assert rule["threads"] == res["threads"], name
        assert rule["resources"] == {"mem_mb": res["mem_mb"], "runtime": res["runtime"],
                                     **({"gpu": 1} if STAGES[stage].gpu else {})}, name
        assert rule["log"] and rule["conda"] and rule["script"] == "../scripts/run_stage.py", name
    assert {r.stage for r in read.values()} == set(STAGES)


def test_the_later_rounds_rules_run_their_round_1_rules_stage():
    """rules/rounds.smk: `use rule` of round 1's rules, the same stage, threads, resources, conda env and script,
    with their own log (and input and output)."""
    rules, read = _rules(), workflow_rules(REPO)
    assert {n: r.base for n, r in read.items() if r.base} == {
        "round_predict_train": "predict", "round_merge_drop": "merge_drop", "round_export": "export",
        "round_evaluate_masks": "evaluate_masks", "round_retrain": "retrain", "round_predict": "predict",
        "round_evaluate_model": "evaluate_model"}
    for name, r in read.items():
        if r.base:
            assert r.stage == read[r.base].stage == rules[name]["stage"] == rules[r.base]["stage"], name
            assert {**rules[name], "log": None} == {**rules[r.base], "log": None}, name
            assert rules[name]["log"] != rules[r.base]["log"], name


def test_the_gpu_rules_are_those_of_the_gpu_stages():
    """gpu_rules (the Slurm profile's GPU rules, tests/test_slurm.py) are the rules whose resources ask for a
    GPU: every GPU stage's, the later rounds' included."""
    gpu = {n for n, r in _rules().items() if r["resources"].get("gpu") == 1}
    assert {"boxcaseg_train", "boxcaseg", "cam_train", "cam", "retrain", "predict", "retrain_hybrid",
            "predict_hybrid", "round_retrain", "round_predict", "round_predict_train"} == gpu
    assert set(gpu_rules(REPO)) == gpu


def test_the_stage_table_lists_each_stages_rule_file_and_tests():
    rows = {line.split("`")[1]: line.split(" | ") for line in stage_table(REPO).splitlines()[2:]}
    assert set(rows) == set(STAGES)
    read = workflow_rules(REPO)
    for name, row in rows.items():
        rule_file = row[3].split("(")[1].rstrip(")")
        assert (REPO / rule_file).exists() and read[name].file == rule_file, (name, row[3])
        for test in row[5].split(", ") if row[5] != "—" else []:
            assert (REPO / test.split("(")[1].rstrip(")")).exists(), (name, test)
    assert "test_retrain_predict.py" in rows["predict"][5] and "test_retrain.py" in rows["predict"][5]
    assert rows["refine_round"][3] == "[rounds.smk](rules/rounds.smk)"


def test_the_hdf5_docs_list_the_columns_of_every_mask_stage():
    table = (REPO / "docs" / "hdf5.md").read_text()
    for name in ("ingest", *mask_stages()):
        assert f"| [{name}](stages/{name}.md) |" in table, name
