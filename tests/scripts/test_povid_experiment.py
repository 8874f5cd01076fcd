"""halluremedy.recipes.povid_experiment (scripts/povid_experiment.py) --test-data: every model of every seed
captioned once on a test split, and same-seed CHAIR_s differences with intervals."""

import json

import pytest

from halluremedy.data.scenes import make_dataset
from halluremedy.eval.seeds import caption_flags
from halluremedy.models.llava import save_model
from halluremedy.recipes import povid_experiment


def test_large_split_differences(tiny_llava_factory, tmp_path):
    test = make_dataset(tmp_path / "scenes", "test", 10, seed=7, progress=False)
    paths = {}
    for k, name in enumerate(("base", "s0_stage1", "s0_stage2", "s1_stage1", "s1_stage2")):
        model, processor = tiny_llava_factory(k)
        save_model(model, processor, tmp_path / name)
        paths[name] = str(tmp_path / name)
    out = tmp_path / "exp"
    for seed in (0, 1):
        (out / f"seed{seed}").mkdir(parents=True)
        (out / f"seed{seed}" / "models.json").write_text(json.dumps(
            {"base": paths["base"], "stage1": paths[f"s{seed}_stage1"], "stage2": paths[f"s{seed}_stage2"]}))
    differences = povid_experiment.large_split_differences(out, [0, 1], test, images=8)
    store = out / "test_test"
    assert sorted(f.name for f in store.iterdir()) == ["base.json", "seed0_stage1.json", "seed0_stage2.json",
                                                       "seed1_stage1.json", "seed1_stage2.json"]  # base once
    assert set(differences) == {"greedy", "sampled"}
    assert set(differences["greedy"]) == {"stage2 - stage1", "stage2 - base"}  # no control among the models
    stored = {f.stem: json.loads(f.read_text()) for f in store.iterdir()}
    for seed, value in zip((0, 1), differences["greedy"]["stage2 - base"]["per_seed"]["values"]):
        a, b = caption_flags(stored[f"seed{seed}_stage2"]), caption_flags(stored["base"])
        assert len(a) == 8 and value == pytest.approx(sum(a[i] - b[i] for i in a) / 8)
    lo, hi = differences["sampled"]["stage2 - stage1"]["interval"]
    assert lo <= differences["sampled"]["stage2 - stage1"]["per_seed"]["mean"] <= hi
    assert "| stage2 - base |" in povid_experiment.interval_markdown(differences)

    mtime = (store / "base.json").stat().st_mtime
    assert povid_experiment.large_split_differences(out, [0, 1], test, images=8) == differences  # cached, not recaptioned
    assert (store / "base.json").stat().st_mtime == mtime
    (out / "seed1" / "models.json").unlink()
    with pytest.raises(SystemExit, match="seed1/models.json"):
        povid_experiment.large_split_differences(out, [0, 1], test, images=8)
