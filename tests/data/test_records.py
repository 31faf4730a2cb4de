import json

import pytest

from tunelab.data.records import DataError, load_records, split_records


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: malformed JSON line"):
        load_records(p)


def test_missing_output_names_index_and_field(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    with pytest.raises(DataError, match=r"d\.json\[1\]: missing field 'output'"):
        load_records(p)


def test_wrong_type_and_non_utf8(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"instruction": 3, "output": "b"}]))
    with pytest.raises(DataError, match=r"field 'instruction' must be a string, got int"):
        load_records(p)
    q = tmp_path / "e.jsonl"
    q.write_bytes(b'{"instruction": "\xff", "output": "b"}\n')
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_records(q)


def test_sharegpt_and_messages_forms(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [
        {
            "conversations": [
                {"from": "human", "value": "q1"},
                {"from": "gpt", "value": "a1"},
                {"from": "human", "value": "q2"},
                {"from": "gpt", "value": "a2"},
            ]
        },
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
            ]
        },
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    a, b = load_records(p)
    assert (a.instruction, a.output, a.history) == ("q2", "a2", [("q1", "a1")])
    assert (b.system, b.instruction, b.output) == ("S", "q", "a")


def test_split_is_seeded_and_85_5_10():
    items = list(range(100))
    train, val, test = split_records(items, (0.85, 0.05, 0.10), seed=123)
    assert (len(train), len(val), len(test)) == (85, 5, 10)
    assert sorted(train + val + test) == items
    assert split_records(items, (0.85, 0.05, 0.10), seed=123) == (train, val, test)
