"""The data layer: bundled heart table, prompts, groups, splits and file formats."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from fairgrpo.data import (
    HEART_CSV,
    DataError,
    TableSpec,
    age_bin_label,
    build_records,
    heart_disease_spec,
    hide_groups,
    load_records,
    load_table,
    table_spec,
    to_dataset,
    train_test_split_records,
)

KEYS = {"prompt", "answer", "source", "group", "true_group", "attributes", "patient_id", "classes"}


@pytest.fixture(scope="module")
def heart_df() -> pd.DataFrame:
    return load_table(HEART_CSV)


@pytest.fixture(scope="module")
def heart_records(heart_df: pd.DataFrame) -> list[dict]:
    return build_records(heart_df, heart_disease_spec())


def test_bundled_heart_data(heart_df: pd.DataFrame, heart_records: list[dict]) -> None:
    assert HEART_CSV.is_file()
    assert len(heart_df) == 920
    assert len(heart_records) == 920  # no row dropped, missing values included
    assert Counter(r["source"] for r in heart_records) == {
        "Cleveland": 304,
        "Hungary": 293,
        "VA Long Beach": 200,
        "Switzerland": 123,
    }
    assert all(set(r) == KEYS for r in heart_records)
    assert Counter(r["attributes"]["sex"] for r in heart_records)["female"] == 194
    # label = num > 0
    assert sum(r["answer"] == "yes" for r in heart_records) == int((heart_df["num"] > 0).sum())
    assert all(r["classes"] == ["yes", "no"] for r in heart_records)
    first = heart_records[0]  # id 1: 63-year-old man at Cleveland, num 0
    assert first["patient_id"] == "1"
    assert first["answer"] == "no"
    assert first["group"] == first["true_group"] == "male|51-75"
    assert first["attributes"] == {"sex": "male", "age": "51-75"}
    assert first["prompt"].startswith("Patient: age 63, sex male, chest pain typical angina, ")
    assert "resting blood pressure 145 mm Hg" in first["prompt"]
    assert first["prompt"].endswith(r"Answer with \boxed{yes} or \boxed{no}.")
    assert len(load_records()) == 920


def _features_part(prompt: str) -> str:
    return prompt.split(". Heart disease?")[0]


def test_no_label_leak(heart_df: pd.DataFrame, heart_records: list[dict]) -> None:
    for r in heart_records:
        assert "num" not in r["prompt"]
        # the only boxed tokens are the two answer options, identical in every prompt
        features = _features_part(r["prompt"])
        assert r"\boxed" not in features
        assert r["prompt"].count(r"\boxed{" + r["answer"] + "}") == 1
    # the prompt does not depend on the label or the id
    changed = heart_df.head(20).copy()
    changed["num"] = (changed["num"] + 1) % 5
    changed["id"] = changed["id"] + 10_000
    before = [r["prompt"] for r in heart_records[:20]]
    after = build_records(changed, heart_disease_spec())
    assert [r["prompt"] for r in after] == before
    assert [r["answer"] for r in after] != [r["answer"] for r in heart_records[:20]]
    with pytest.raises(DataError, match="leak"):
        build_records(
            heart_df.head(3), dataclasses.replace(heart_disease_spec(), feature_columns=("age", "num"))
        )


def test_missing_values_render_unknown_and_rows_are_kept(
    heart_df: pd.DataFrame, heart_records: list[dict]
) -> None:
    missing_ca = heart_df["ca"].isna().to_numpy()
    assert missing_ca.sum() > 0
    for r, m in zip(heart_records, missing_ca, strict=True):
        assert ("major vessels coloured unknown" in r["prompt"]) == bool(m)
    # cholesterol 0 is the Swiss "not measured" code
    zero_chol = (heart_df["chol"] == 0).to_numpy()
    assert all(
        "cholesterol unknown" in r["prompt"] for r, z in zip(heart_records, zero_chol, strict=True) if z
    )
    # a missing demographic value: group None, attribute "unknown", row kept
    df = heart_df.head(3).copy()
    df["sex"] = df["sex"].astype(object)
    df.loc[1, "sex"] = None
    recs = build_records(df, heart_disease_spec())
    assert len(recs) == 3
    assert recs[1]["group"] is None and recs[1]["true_group"] is None
    assert recs[1]["attributes"]["sex"] == "unknown"
    assert "sex unknown" in recs[1]["prompt"]


@pytest.mark.parametrize(
    ("age", "expected"),
    [(20, "0-25"), (25, "0-25"), (26, "26-50"), (50, "26-50"), (51, "51-75"), (75, "51-75"), (76, ">75")],
)
def test_age_bins(heart_df: pd.DataFrame, age: int, expected: str) -> None:
    assert age_bin_label(age) == expected
    df = heart_df.head(1).copy()
    df["age"] = age
    rec = build_records(df, heart_disease_spec())[0]
    assert rec["attributes"]["age"] == expected
    assert rec["group"] == f"male|{expected}"
    assert f"age {age}," in rec["prompt"]


def test_age_bin_edge_cases() -> None:
    assert age_bin_label(None) is None
    assert age_bin_label(float("nan")) is None
    assert age_bin_label("sixty") is None
    assert age_bin_label(40, (18, 65)) == "19-65"
    assert age_bin_label(25.5) == "26-50"


def test_split_is_stratified_deterministic_and_disjoint(heart_records: list[dict]) -> None:
    train, test = train_test_split_records(heart_records, test_size=0.25, seed=0)
    assert len(test) == 230 and len(train) == 690
    ids_train = {r["patient_id"] for r in train}
    ids_test = {r["patient_id"] for r in test}
    assert not ids_train & ids_test
    assert len(ids_train | ids_test) == 920
    _, again_test = train_test_split_records(heart_records, test_size=0.25, seed=0)
    assert [r["patient_id"] for r in again_test] == [r["patient_id"] for r in test]
    _, other = train_test_split_records(heart_records, test_size=0.25, seed=1)
    assert {r["patient_id"] for r in other} != ids_test
    # every (source, answer) stratum keeps about a quarter of its records in test
    full = Counter((r["source"], r["answer"]) for r in heart_records)
    part = Counter((r["source"], r["answer"]) for r in test)
    for key, n in full.items():
        assert abs(part[key] - 0.25 * n) <= 2, key


def test_split_tiny_strata_and_errors() -> None:
    recs = [{"source": "s", "true_group": str(i % 3), "answer": "yes" if i % 2 else "no"} for i in range(7)]
    train, test = train_test_split_records(recs, test_size=0.3, seed=3)
    assert len(train) + len(test) == 7 and len(test) == 2
    with pytest.raises(ValueError):
        train_test_split_records(recs, test_size=1.5)


def test_file_format_round_trip(tmp_path: Path, heart_df: pd.DataFrame, heart_records: list[dict]) -> None:
    import datasets

    reference = [r["prompt"] for r in heart_records]
    heart_df.to_csv(tmp_path / "h.csv", index=False)
    heart_df.to_json(tmp_path / "h.jsonl", orient="records", lines=True)
    heart_df.to_json(tmp_path / "h.json", orient="records")
    heart_df.to_parquet(tmp_path / "h.parquet")
    datasets.Dataset.from_pandas(heart_df, preserve_index=False).save_to_disk(str(tmp_path / "h_ds"))
    for name in ("h.csv", "h.jsonl", "h.json", "h.parquet", "h_ds"):
        recs = load_records(tmp_path / name)
        assert [r["prompt"] for r in recs] == reference, name
        assert [r["answer"] for r in recs] == [r["answer"] for r in heart_records], name


def test_load_errors_name_the_problem(tmp_path: Path, heart_df: pd.DataFrame) -> None:
    (tmp_path / "table.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"table\.xlsx.*accepted formats"):
        load_table(tmp_path / "table.xlsx")
    with pytest.raises(DataError, match="does not exist"):
        load_table(tmp_path / "missing.csv")
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"broken\.parquet"):
        load_table(tmp_path / "broken.parquet")
    with pytest.raises(DataError, match=r"'diagnosis' \(label_column\).*available columns: id, age, sex"):
        build_records(heart_df, dataclasses.replace(heart_disease_spec(), label_column="diagnosis"))
    with pytest.raises(DataError, match="'site'"):
        build_records(heart_df, dataclasses.replace(heart_disease_spec(), source_column="site"))
    assert issubclass(DataError, ValueError)


def test_hide_groups(heart_df: pd.DataFrame) -> None:
    recs = load_records(hide_groups=True)
    assert all(r["group"] is None for r in recs)
    assert recs[0]["true_group"] == "male|51-75"
    assert recs[0]["attributes"]["sex"] == "male"
    shown = build_records(heart_df.head(5), heart_disease_spec())
    hidden = hide_groups(shown)
    assert [r["group"] for r in hidden] == [None] * 5
    assert [r["true_group"] for r in hidden] == [r["group"] for r in shown]
    assert shown[0]["group"] is not None  # the input is not modified


def test_chat_prompts_and_dataset() -> None:
    recs = load_records(chat=True)
    assert recs[0]["prompt"][0]["role"] == "user"
    assert recs[0]["prompt"][0]["content"].startswith("Patient: age 63")
    ds = to_dataset(recs[:8])
    assert {"prompt", "answer", "source", "group", "true_group", "patient_id", "attr_sex", "attr_age"} <= set(
        ds.column_names
    )
    assert ds[0]["prompt"] == recs[0]["prompt"]
    assert ds[0]["attr_age"] == "51-75"
    hidden = to_dataset(load_records(hide_groups=True)[:4])
    assert hidden.features["group"].dtype == "string"  # all-None column keeps a string type
    assert hidden[0]["group"] is None and hidden[0]["true_group"] == "male|51-75"


def test_user_table_with_class_names(tmp_path: Path) -> None:
    rows = [
        {"pid": "a", "site": "north", "gender": 0, "age": 30, "bp": 120.5, "diagnosis": "Benign"},
        {"pid": "b", "site": "north", "gender": 1, "age": 80, "bp": None, "diagnosis": "Malignant"},
        {"pid": "c", "site": "south", "gender": 1, "age": None, "bp": 99.0, "diagnosis": "Benign"},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    spec = table_spec(
        "diagnosis",
        source_column="site",
        group_columns=("gender", "age"),
        age_column="age",
        id_column="pid",
        value_labels={"gender": {"0": "female", "1": "male"}},
    )
    recs = load_records(path, spec)
    assert [r["answer"] for r in recs] == ["Benign", "Malignant", "Benign"]
    assert recs[0]["classes"] == ["Benign", "Malignant"]
    assert recs[0]["prompt"] == (
        r"Patient: gender female, age 30, bp 120.5. Diagnosis? "
        r"Answer with \boxed{Benign} or \boxed{Malignant}."
    )
    assert recs[1]["group"] == "male|>75"
    assert recs[2]["group"] is None and recs[2]["attributes"]["age"] == "unknown"
    assert [r["patient_id"] for r in recs] == ["a", "b", "c"]
    binary = load_records(path, dataclasses.replace(spec, positive_label="Malignant"))
    assert [r["answer"] for r in binary] == ["no", "yes", "no"]
    with pytest.raises(DataError, match="positive_label 'Malgnant'"):
        load_records(path, dataclasses.replace(spec, positive_label="Malgnant"))
    with pytest.raises(DataError, match="not a number"):
        load_records(path, dataclasses.replace(spec, positive=TableSpec().positive))
