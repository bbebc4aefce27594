"""Problem files in the formats researchers have (experiments/datasets.py, task=math_file): the same rows give
the same Examples from JSONL, a JSON array, parquet, verl's parquet and ``save_to_disk`` directories; chat
prompts are rendered by the model's chat template; bad rows are named by file and row."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from experiments.datasets import RowFormat, load_examples
from experiments.tasks import make_task

ROWS = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i), "level": i % 3} for i in range(12)]


def _verl(rows):
    """verl's RL schema: chat-message prompt, reward_model.ground_truth, data_source."""
    return [
        {
            "data_source": "sums",
            "prompt": [{"role": "user", "content": r["problem"]}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": r["answer"]},
            "extra_info": {"level": r["level"]},
        }
        for r in rows
    ]


def write(tmp_path: Path, kind: str, rows=ROWS) -> Path:
    if kind == "jsonl":
        path = tmp_path / "rows.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif kind == "json":
        path = tmp_path / "rows.json"
        path.write_text(json.dumps(rows))
    elif kind in ("parquet", "verl"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / f"{kind}.parquet"
        pq.write_table(pa.Table.from_pylist(_verl(rows) if kind == "verl" else rows), path)
    elif kind == "dataset":
        from datasets import Dataset

        path = tmp_path / "dataset"
        Dataset.from_list(rows).save_to_disk(str(path))
    elif kind == "dataset_dict":
        from datasets import Dataset, DatasetDict

        path = tmp_path / "dataset_dict"
        DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:3])}).save_to_disk(
            str(path)
        )
    else:
        raise AssertionError(kind)
    return path


FLAT = RowFormat()
VERL = RowFormat(prompt_field="prompt", answer_field="reward_model.ground_truth")


def comparable(examples):
    return [(e.prompt, e.answer, e.target, e.meta["problem"], e.meta["row"]) for e in examples]


@pytest.mark.parametrize("kind", ["json", "parquet", "dataset"])
def test_every_flat_format_gives_the_jsonl_examples(tmp_path, kind):
    want = load_examples(write(tmp_path, "jsonl"), FLAT)
    got = load_examples(write(tmp_path, kind), FLAT)
    assert comparable(got) == comparable(want) and len(got) == 12
    assert [e.meta["columns"] for e in got] == [e.meta["columns"] for e in want]
    assert want[3].meta["columns"] == {"answer": "6", "level": 0}
    assert want[3].prompt.startswith("What is 3 + 3?\n") and "\\boxed{}" in want[3].prompt


def test_dataset_dict_needs_a_split(tmp_path):
    path = write(tmp_path, "dataset_dict")
    with pytest.raises(ValueError, match=r"holds the splits \['test', 'train'\]; choose one with split"):
        load_examples(path, FLAT)
    assert comparable(load_examples(path, replace(FLAT, split="train"))) == comparable(
        load_examples(write(tmp_path, "jsonl"), FLAT)
    )
    assert len(load_examples(path, replace(FLAT, split="test"))) == 3


def test_verl_parquet_gives_the_same_problems_as_chat_turns(tmp_path):
    flat = load_examples(write(tmp_path, "jsonl"), FLAT)
    verl = load_examples(write(tmp_path, "verl"), VERL)
    assert [(e.answer, e.target, e.meta["problem"]) for e in verl] == [
        (e.answer, e.target, e.meta["problem"]) for e in flat
    ]
    # the template wraps the last user turn; the plain text (no chat template) is that turn
    assert verl[3].messages == (("user", flat[3].prompt),) and verl[3].prompt == flat[3].prompt
    assert verl[3].meta["columns"]["data_source"] == "sums" and "prompt" not in verl[3].meta["columns"]
    assert flat[3].messages is None


def test_task_math_file_reads_verl_and_datasets_directories(tmp_path):
    verl = make_task(
        "math_file",
        path=str(write(tmp_path, "verl")),
        prompt_field="prompt",
        answer_field="reward_model.ground_truth",
        test_fraction=0.3,
    )
    flat = make_task("math_file", path=str(write(tmp_path, "jsonl")), test_fraction=0.3)
    assert [e.meta["problem"] for e in verl.test()] == [e.meta["problem"] for e in flat.test()]
    split = make_task(
        "math_file",
        path=str(write(tmp_path, "dataset_dict")),
        split="train",
        test_path=str(tmp_path / "dataset_dict"),
        test_split="test",
    )
    assert [e.meta["problem"] for e in split.test()] == [r["problem"] for r in ROWS[:3]]
    assert len(split.train()) == 9


def test_verl_preset_reads_verl_parquet(tmp_path):
    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    raw = compose_config("task=verl_file", f"task.path={write(tmp_path, 'verl')}", "task.test_fraction=0.3")
    task = make_task(**OmegaConf.to_container(raw.task))
    assert task.name == "math_file" and all(e.messages for e in task.train())
    assert {e.answer for e in task.train()} | {e.answer for e in task.test()} == {r["answer"] for r in ROWS}


@pytest.mark.parametrize(
    "row, why",
    [
        (
            {"prompt": [{"role": "user"}], "reward_model": {"ground_truth": "1"}},
            "message 0 has no string 'content'",
        ),
        ({"prompt": [{"content": "x"}], "reward_model": {"ground_truth": "1"}}, "message 0 is not a"),
        (
            {"prompt": [{"role": "system", "content": "x"}], "reward_model": {"ground_truth": "1"}},
            "no non-empty user",
        ),
        (
            {"prompt": [{"role": "user", "content": "x"}], "reward_model": {}},
            "missing field 'reward_model.ground_truth'",
        ),
        (
            {"prompt": [{"role": "user", "content": "x"}], "reward_model": {"ground_truth": None}},
            "string or a number",
        ),
        ({"prompt": 7, "reward_model": {"ground_truth": "1"}}, "non-empty string or a list of chat messages"),
    ],
)
def test_bad_verl_row_named_by_file_and_row(tmp_path, row, why):
    good = _verl(ROWS[:2])
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [*good, row]) + "\n")
    with pytest.raises(ValueError, match="row 3") as info:
        load_examples(path, VERL)
    assert str(path) in str(info.value) and why in str(info.value)


def test_format_settings_validated_at_load_time(tmp_path):
    path = write(tmp_path, "jsonl")
    with pytest.raises(ValueError, match="prompt_template must contain"):
        make_task("math_file", path=str(path), prompt_template="no placeholder")
    with pytest.raises(ValueError, match="answer_extraction must be one of"):
        make_task("math_file", path=str(path), answer_extraction="regex")
    with pytest.raises(ValueError, match="rows.jsonl: row 1: missing field 'question'"):
        make_task("math_file", path=str(path), prompt_field="question")
    with pytest.raises(FileNotFoundError, match="no such file"):
        make_task("math_file", path=str(tmp_path / "absent"))


def _split_task(name, **params):
    return make_task(name, test_fraction=0.5, **params)


def test_answer_extraction_choices(tmp_path):
    path = str(write(tmp_path, "jsonl"))
    make_task = _split_task
    text = "first 3, then \\boxed{4} and finally 5"
    assert make_task("math_file", path=path).extract_answer(text) == "4"
    assert make_task("math_file", path=path, answer_extraction="last_number").extract_answer(text) == "5"
    assert make_task("math_file", path=path, answer_extraction="boxed").extract_answer("just 5") is None
    assert make_task("math_file", path=path).extract_answer("just 5") == "5"


def test_chat_turns_are_rendered_by_the_chat_template(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.config import ModelConfig
    from grpo.model import load_policy

    chat_dir = tmp_path / "chat_model"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }};{% endfor %}"
        "{% if add_generation_prompt %}a:{% endif %}"
    )
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(chat_dir)
    tokenizer.save_pretrained(chat_dir)
    rows = [
        {"prompt": [{"role": "system", "content": "1+1"}, {"role": "user", "content": "2+2"}], "answer": "4"}
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n")
    (ex,) = load_examples(path, RowFormat(prompt_field="prompt", prompt_template="{prompt}="))
    assert ex.messages == (("system", "1+1"), ("user", "2+2=")) and ex.prompt == "1+1\n\n2+2="
    chat = load_policy(ModelConfig(source="local"), chat_dir, need_reference=False, seed=0)
    assert chat.tokenizer.decode(chat.encode_prompt(ex.prompt, ex.messages)) == "<bos>s:1+1;u:2+2=;a:"
    # no template (model.chat_template=never, or a tokenizer without one): the plain text, roles dropped
    never = load_policy(
        ModelConfig(source="local", chat_template="never"), chat_dir, need_reference=False, seed=0
    )
    assert never.encode_prompt(ex.prompt, ex.messages) == never.encode_prompt("1+1\n\n2+2=")
