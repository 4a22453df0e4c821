"""A recipe run end to end on a tiny local model and tokenizer: data layer, adapter, training, run folder."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import pytest

import slimtune as st
from slimtune.errors import ConfigError
from slimtune.train import read_metrics
from slimtune.train.recipe import load_recipe
from slimtune.train.run import build_data, run_recipe
from tests.train.helpers import tiny_llama

_TEXT = "the a cat dog sat on mat hello hi there how are you fine thanks what is two plus four six"
WORDS = _TEXT.split()


def _tokenizer() -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<eos>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    model_dir = tmp_path / "tiny"
    tiny_llama(seed=4).save_pretrained(model_dir)
    _tokenizer().save_pretrained(model_dir)  # type: ignore[attr-defined]
    rng = random.Random(0)
    for name, n in (("train", 24), ("eval", 6)):
        rows = [{"prompt": " ".join(rng.choices(WORDS, k=4)), "completion": " ".join(rng.choices(WORDS, k=3))}
                for _ in range(n)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_run_recipe_fills_the_run_folder(folder: Path) -> None:
    path = folder / "recipe.yaml"
    path.write_text(textwrap.dedent(f"""\
        model: {{name: "{folder / 'tiny'}"}}
        method: {{type: lora, r: 4, alpha: 8}}
        data:
          train: {{path: "{folder / 'train.jsonl'}", schema: prompt_completion}}
          eval: {{path: "{folder / 'eval.jsonl'}", schema: prompt_completion}}
          max_length: 32
        train: {{steps: 4, batch_size: 4, lr: 1e-2, eval_every: 2, checkpoint_every: 2}}
        output_dir: "{folder / 'run'}"
    """))
    recipe = load_recipe(path, ["train.steps=6"])
    result = run_recipe(recipe)
    run = folder / "run"
    assert result.steps == 6 and [e["step"] for e in result.eval_history] == [2, 4, 6]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 7))
    assert load_recipe(run / "recipe.yaml") == recipe
    lineage = json.loads((run / "adapter" / "slimtune.json").read_text())
    assert lineage["recipe"]["train"]["steps"] == 6 and lineage["datasets"]["train"]["examples"] == 24
    assert "eval/eval" in lineage["datasets"]
    assert lineage["metrics"]["eval/loss"] == result.eval_history[-1]["eval/loss"]
    st.load_adapter(tiny_llama(seed=4), run / "adapter")  # strict load: keys and base fingerprint match
    again = run_recipe(recipe)  # a finished run resumes to a no-op
    assert again.stopped_reason == "already_complete" and again.losses == result.losses


def test_data_section_errors_name_the_option() -> None:
    with pytest.raises(ConfigError, match="unknown data option"):
        build_data({"train": {"path": "x.jsonl"}, "shuffle": True}, _tokenizer())
    with pytest.raises(ConfigError, match=r"data\.train.*'colums'"):
        build_data({"train": {"path": "x.jsonl", "colums": {}}}, _tokenizer())
