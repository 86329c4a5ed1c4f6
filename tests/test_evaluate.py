"""The evaluation command and the model card it writes (the measurements themselves run in
``python -m sdlearn.evaluate``; here each piece runs small, on the bundled model)."""

import json

import numpy as np
import pytest

from sdlearn import evaluate, model_card, models, world

FOLDER = models.BUNDLED_MODEL_DIR


@pytest.mark.parametrize("kind", ["full", "partial", "two"])
def test_eval_prompts_are_what_they_say(kind):
    prompts = evaluate.eval_prompts(kind, 30, seed=evaluate.HELD_OUT_SEED)
    assert len(prompts) == 30
    assert prompts == evaluate.eval_prompts(kind, 30, seed=evaluate.HELD_OUT_SEED)  # deterministic
    for text, named in prompts:
        assert len(named) == (2 if kind == "two" else 1)
        assert all(obj["shape"] in text for obj in named)
        if kind == "full":
            assert set(named[0]) == set(world.ATTRIBUTES)
        if kind == "partial":
            assert set(named[0]) < set(world.ATTRIBUTES)
    # validation prompts are other prompts than the held-out ones the card reports
    assert prompts != evaluate.eval_prompts(kind, 30, seed=evaluate.VALIDATION_SEED)


def test_zero_shot_prompts_vary_only_the_attribute_under_test():
    obj = world.Obj("red", "square", "big", "left", (0.25, 0.5), 0.2)
    prompts, classes = evaluate.zero_shot_prompts(obj, "colour")
    assert classes == list(world.COLOURS) and prompts[0] == "a red square"
    prompts, classes = evaluate.zero_shot_prompts(obj, "position")
    assert prompts == [f"a square {world.POSITIONS[p][0]}" for p in classes]


def test_prompt_following_counts_what_the_judge_says(bundled_pipe):
    result = evaluate.prompt_following(bundled_pipe, count=4, steps=2, guidance_scale=4.0, batch_size=4)
    assert set(result) == {"full", "partial", "two"}
    for kind, r in result.items():
        assert r["n"] == 4 and 0.0 <= r["all_named_right"] <= 1.0
    # attributes every prompt of a kind names: an image with all of them right counts in each
    for kind, always_named in (("full", world.ATTRIBUTES), ("two", ("colour", "shape", "position"))):
        r = result[kind]
        assert r["all_named_right"] <= min(r[a] for a in always_named) + 1e-9


def test_best_guidance_takes_the_best_mean_and_the_smaller_scale_on_a_tie():
    sweep = {2.0: {"mean": 0.8}, 3.0: {"mean": 0.9}, 4.0: {"mean": 0.9}, 7.5: {"mean": 0.7}}
    assert evaluate.best_guidance(sweep) == 3.0


def test_guidance_sweep_reports_each_scale(bundled_pipe):
    sweep = evaluate.guidance_sweep(bundled_pipe, scales=(1.5, 4.0), count=2, steps=2)
    assert set(sweep) == {1.5, 4.0}
    for rates in sweep.values():
        assert rates["mean"] == pytest.approx(np.mean([rates["full"], rates["partial"], rates["two"]]))


def test_seconds_per_image_reports_median_and_quartiles(bundled_pipe):
    speed = evaluate.seconds_per_image(bundled_pipe, steps=2, repeats=3)
    assert speed["repeats"] == 3 and 0 < speed["q1"] <= speed["median"] <= speed["q3"]


def test_the_card_shows_the_evaluation_it_was_written_from():
    evaluation = json.loads((FOLDER / "evaluation.json").read_text())
    card = model_card.render_card(FOLDER, evaluation)
    assert card == (FOLDER / "README.md").read_text(), "the shipped card is not the one its evaluation.json renders"
    assert f"{evaluation['vae_psnr_db']:.1f} dB" in card
    assert f"Recommended guidance scale for this\nmodel: {evaluation['guidance_scale']:g}" in card
    full = evaluation["prompt_following"]["full"]["all_named_right"]
    assert f"{100 * full:.1f}%" in card


def test_evaluate_command_refuses_a_folder_that_is_no_model(tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--model", str(tmp_path)])
    assert "is not a diffusers folder" in capsys.readouterr().err


def test_sampler_table_runs_each_sampler_and_puts_the_pipelines_own_back(bundled_pipe):
    own = bundled_pipe.scheduler
    samplers = (("LMS", "LMSDiscreteScheduler", 2), ("DDIM", "DDIMScheduler", 3))
    table = evaluate.sampler_table(bundled_pipe, count=2, samplers=samplers)
    assert bundled_pipe.scheduler is own
    assert list(table) == ["LMS", "DDIM"] and table["DDIM"]["steps"] == 3
    for row in table.values():
        assert row["all"] == pytest.approx(np.mean([row["full"], row["partial"], row["two"]]))
    text = evaluate.format_sampler_table(table)
    assert text.splitlines()[0].startswith("| sampler | steps |") and "| LMS | 2 |" in text


def test_the_card_holds_the_sampler_table_at_sd_guidance_and_says_why_ddim_ships():
    evaluation = json.loads((FOLDER / "evaluation.json").read_text())
    table = evaluation["samplers_at_sd_default"]
    card = (FOLDER / "README.md").read_text()
    assert [name for name, _, _ in evaluate.SD_SAMPLERS] == list(table)
    assert evaluate.format_sampler_table(table) in card
    # the card's reason for shipping DDIM instead of SD 1.5's PNDM: at guidance 7.5 this model keeps to the
    # prompt under the first-order samplers better than under the multistep ones
    assert "first-order samplers (DDIM, Euler) but not under PNDM's and LMS's" in card
    assert min(table["DDIM"]["all"], table["Euler"]["all"]) > max(table["PNDM"]["all"], table["LMS"]["all"])
    short = [name for name, row in table.items() if row["all"] < 0.90]
    assert model_card.shortfall_sentence(table) in card and all(name in model_card.shortfall_sentence(table)
                                                                 for name in short)


def test_an_unknown_prompt_set_or_an_empty_folder_gets_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown prompt set 'single'; the evaluation has 'full', 'partial', 'two'"):
        evaluate.eval_prompts("single", 10, seed=0)
    with pytest.raises(ValueError, match="count must be an int >= 1"):
        evaluate.eval_prompts("full", "10", seed=0)
    with pytest.raises(ValueError, match=r"not a model folder the evaluation can measure: it has no model_index.json "
                                         r"and no clip"):
        evaluate.evaluate(tmp_path)
