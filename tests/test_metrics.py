"""Metrics of ALGORITHM.md section 4 against hand-computed cases (arithmetic in the comments)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairgrpo.metrics import (
    classification_metrics,
    fairness_report,
    fairness_report_for_records,
    history_entry,
    patient_outcome_changes,
    report_markdown,
)
from fairgrpo.plots import plot_metric_history

YN = ["yes", "no"]
approx = pytest.approx
SQRT2 = math.sqrt(2.0)
SQRT3 = math.sqrt(3.0)


def test_binary_counts_rates_and_invalid_prediction() -> None:
    y_true = ["yes", "yes", "yes", "no", "no"]
    y_pred = ["yes", "no", None, "no", "yes"]
    m = classification_metrics(y_true, y_pred, YN)
    # class yes: tp=1 (#0), fn=2 (#1 said no, #2 gave no answer), fp=1 (#4), tn=1 (#3)
    assert {k: m["per_class"]["yes"][k] for k in ("tp", "fp", "fn", "tn")} == {
        "tp": 1,
        "fp": 1,
        "fn": 2,
        "tn": 1,
    }
    # class no: tp=1 (#3), fn=1 (#4), fp=1 (#1), tn=2 (#0, and #2: the invalid answer is no positive)
    assert {k: m["per_class"]["no"][k] for k in ("tp", "fp", "fn", "tn")} == {
        "tp": 1,
        "fp": 1,
        "fn": 1,
        "tn": 2,
    }
    # yes: acc 2/5, precision 1/2, tpr 1/3, fpr 1/2, f1 2/(2+1+2) = 0.4
    assert m["per_class"]["yes"]["tpr"] == approx(1 / 3)
    assert m["per_class"]["yes"]["f1"] == approx(0.4)
    # no: acc 3/5, precision 1/2, tpr 1/2, fpr 1/3, f1 2/(2+1+1) = 0.5
    assert m["per_class"]["no"]["fpr"] == approx(1 / 3)
    # macro: acc (0.4+0.6)/2, precision 0.5, tpr (1/3+1/2)/2 = 5/12, fpr (1/2+1/3)/2 = 5/12, f1 0.45
    assert m["accuracy"] == approx(0.5)
    assert m["precision"] == approx(0.5)
    assert m["tpr"] == approx(5 / 12)
    assert m["fpr"] == approx(5 / 12)
    assert m["f1"] == approx(0.45)
    # exactly right: #0 and #3 -> 2/5; one invalid answer of five
    assert m["exact_accuracy"] == approx(0.4)
    assert (m["n_invalid"], m["invalid_rate"]) == (1, approx(0.2))


def test_unparseable_and_case_insensitive_predictions() -> None:
    # "YES" is the class yes; "maybe" is invalid (wrong for the true class, no fp for any class)
    m = classification_metrics(["yes", "no"], ["YES", "maybe"], YN)
    assert m["per_class"]["yes"]["tp"] == 1
    assert m["per_class"]["no"]["fn"] == 1
    assert m["per_class"]["yes"]["fp"] == 0
    assert m["exact_accuracy"] == approx(0.5)
    with pytest.raises(ValueError, match="not one of the classes"):
        classification_metrics(["perhaps"], ["yes"], YN)


def test_group_with_a_single_class() -> None:
    # all true yes, predictions yes/no
    m = classification_metrics(["yes", "yes"], ["yes", "no"], YN)
    # yes: tp1 fn1 fp0 tn0 -> precision 1, tpr 1/2, fpr undefined (no negatives), f1 2/3, acc 1/2
    # no:  tp0 fn0 fp1 tn1 -> precision 0, tpr undefined (no positives), fpr 1/2, f1 0, acc 1/2
    assert m["per_class"]["yes"]["fpr"] is None
    assert m["per_class"]["no"]["tpr"] is None
    # macro over the defined classes only: tpr 1/2, fpr 1/2, precision (1+0)/2, f1 (2/3+0)/2
    assert m["tpr"] == approx(0.5)
    assert m["fpr"] == approx(0.5)
    assert m["precision"] == approx(0.5)
    assert m["f1"] == approx(1 / 3)
    # all right: the absent class "no" has tp=fp=fn=0 -> f1 and precision undefined, fpr 0/2
    m = classification_metrics(["yes", "yes"], ["yes", "yes"], YN)
    assert m["per_class"]["no"]["f1"] is None
    assert (m["f1"], m["precision"], m["tpr"], m["fpr"], m["accuracy"]) == (1.0, 1.0, 1.0, 0.0, 1.0)


def test_multiclass_macro() -> None:
    # classes a, b, c; true a a b c, pred a b b b
    m = classification_metrics(list("aabc"), list("abbb"), list("abc"))
    # a: tp1 fn1 fp0 tn2 -> f1 2/3; b: tp1 fn0 fp2 tn1 -> f1 2/4; c: tp0 fn1 fp0 tn3 -> f1 0
    assert m["f1"] == approx((2 / 3 + 0.5 + 0.0) / 3)
    # OvR accuracy a 3/4, b 2/4, c 3/4 -> 2/3 (higher than the exact-match 2/4)
    assert m["accuracy"] == approx(2 / 3)
    assert m["exact_accuracy"] == approx(0.5)
    # precision: a 1, b 1/3, c undefined (never predicted) -> (1 + 1/3)/2
    assert m["precision"] == approx(2 / 3)


def _two_source_case() -> dict:
    # Source A, 8 samples. F = female, M = male; age bins x, y, z.
    #   F0 yes->yes x | F1 yes->no x | F2 no->no y | F3 no->no y
    #   M0 yes->yes y | M1 yes->yes z | M2 no->no z | M3 no->no z
    # Source B, 4 samples, all male: yes->yes x | no->no x | yes->no y | no->no y
    y_true = [*("yes", "yes", "no", "no", "yes", "yes", "no", "no"), *("yes", "no", "yes", "no")]
    y_pred = [*("yes", "no", "no", "no", "yes", "yes", "no", "no"), *("yes", "no", "no", "no")]
    sources = ["A"] * 8 + ["B"] * 4
    sex = ["female"] * 4 + ["male"] * 4 + ["male"] * 4
    age = [*("x", "x", "y", "y", "y", "z", "z", "z"), *("x", "x", "y", "y")]
    return fairness_report(y_true, y_pred, sources, {"sex": sex, "age": age}, YN)


def test_gaps_sigma_and_equity_scaled_scores() -> None:
    r = _two_source_case()
    a = r["per_source"]["A"]
    # A, sex: female true yy nn pred y n n n
    #   yes: tp1 fn1 fp0 tn2 (prec 1, tpr 1/2, fpr 0, f1 2/3); no: tp2 fn0 fp1 tn1 (prec 2/3, tpr 1,
    #   fpr 1/2, f1 4/5) -> macro prec 5/6, tpr 3/4, fpr 1/4, f1 11/15, acc 3/4
    # male is perfect: prec 1, tpr 1, fpr 0, f1 1, acc 1
    sex = a["attributes"]["sex"]["gaps"]
    assert sex["PP"] == approx(100 * (1 - 5 / 6))  # 16.67
    assert sex["EOD"] == approx(25.0)
    assert sex["FPR_Diff"] == approx(25.0)
    assert sex["dF1"] == approx(4 / 15)
    assert sex["sF1"] == approx((4 / 15) / SQRT2)  # two values: sample std = |a - b| / sqrt(2)
    assert sex["dAcc"] == approx(25.0)
    assert sex["sAcc"] == approx(25.0 / SQRT2)
    # A, age: x = {yes->yes, yes->no} (single true class): acc 1/2, prec 1/2, tpr 1/2, fpr 1/2,
    # f1 1/3 (see test_group_with_a_single_class); y and z are perfect.
    # acc [1/2, 1, 1]: Δ = 1/2; σ (ddof=1) = 1/2 * std([1,0,0], ddof=1) = 1/2 * sqrt(1/3)
    age = a["attributes"]["age"]["gaps"]
    assert age["dAcc"] == approx(50.0)
    assert age["sAcc"] == approx(50.0 / SQRT3)
    assert age["PP"] == approx(50.0)
    assert age["EOD"] == approx(50.0)
    assert age["FPR_Diff"] == approx(50.0)
    assert age["dF1"] == approx(2 / 3)
    assert age["sF1"] == approx((2 / 3) / SQRT3)
    # source A: averaged over the two attributes
    assert a["gaps"]["PP"] == approx((100 / 6 + 50) / 2)
    assert a["gaps"]["dF1"] == approx((4 / 15 + 2 / 3) / 2)  # 7/15
    s_f1_a = ((4 / 15) / SQRT2 + (2 / 3) / SQRT3) / 2
    assert a["gaps"]["sF1"] == approx(s_f1_a)
    # A pooled: yes tp3 fn1 fp0 tn4 (f1 6/7), no tp4 fn0 fp1 tn3 (f1 8/9) -> F1 55/63, acc 7/8
    assert a["metrics"]["f1"] == approx(55 / 63)
    assert a["metrics"]["accuracy"] == approx(7 / 8)
    assert a["F1_ES"] == approx((55 / 63) / (1 + s_f1_a))

    b = r["per_source"]["B"]
    # B has a single sex: no sex gap; age x perfect, y = {yes->no, no->no}:
    #   yes tp0 fn1 fp0 tn1 (prec undefined, tpr 0, fpr 0/1, f1 0); no tp1 fn0 fp1 tn0 (prec 1/2,
    #   tpr 1, fpr 1/1, f1 2/3) -> macro prec 1/2, tpr 1/2, fpr 1/2, f1 1/3, acc 1/2
    assert b["attributes"]["sex"]["gaps"] is None
    assert b["gaps"]["PP"] == approx(50.0)
    assert b["gaps"]["EOD"] == approx(50.0)
    assert b["gaps"]["FPR_Diff"] == approx(50.0)
    assert b["gaps"]["sF1"] == approx((2 / 3) / SQRT2)
    # B pooled: yes tp1 fn1 fp0 tn2 (f1 2/3), no tp2 fn0 fp1 tn1 (f1 4/5) -> F1 11/15, acc 3/4
    assert b["metrics"]["f1"] == approx(11 / 15)

    s = r["summary"]
    # averaged over sources A and B
    assert s["PP"] == approx(((100 / 6 + 50) / 2 + 50) / 2)  # 41.67
    assert s["EOD"] == approx(((25 + 50) / 2 + 50) / 2)  # 43.75
    assert s["FPR_Diff"] == approx(((25 + 50) / 2 + 50) / 2)  # 43.75
    assert s["dF1"] == approx((7 / 15 + 2 / 3) / 2)  # 17/30
    s_f1 = (s_f1_a + (2 / 3) / SQRT2) / 2
    assert s["sF1"] == approx(s_f1)
    s_acc = ((25 / SQRT2 + 50 / SQRT3) / 2 + 50 / SQRT2) / 2
    assert s["sAcc"] == approx(s_acc)
    assert s["dAcc"] == approx(((25 + 50) / 2 + 50) / 2)
    f1 = (55 / 63 + 11 / 15) / 2
    assert s["F1"] == approx(f1)
    assert s["Acc"] == approx(100 * (7 / 8 + 3 / 4) / 2)  # 81.25
    assert s["F1_ES"] == approx(f1 / (1 + s_f1))
    assert s["Acc_ES"] == approx(100 * 0.8125 / (1 + s_acc / 100))
    assert s["F1_ES"] <= s["F1"]
    # pooled over everything: 12 samples
    assert r["overall"]["n"] == 12
    json.dumps(r, allow_nan=False)


def test_unknown_values_and_small_groups_are_left_out_of_gaps() -> None:
    # female perfect (2), male 1 of 2 right, unknown sex all wrong: the unknown value is reported
    # but does not enter the gap
    y_true = ["yes", "no", "yes", "no", "yes", "no"]
    y_pred = ["yes", "no", "yes", "yes", "no", "yes"]
    sex = ["female", "female", "male", "male", None, "unknown"]
    r = fairness_report(y_true, y_pred, ["S"] * 6, {"sex": sex}, YN)
    attr = r["per_source"]["S"]["attributes"]["sex"]
    assert set(attr["subgroups"]) == {"female", "male", "unknown"}
    assert attr["gap_subgroups"] == ["female", "male"]
    # male: yes tp1 fn0 fp1 tn0 (acc 1/2), no tp0 fn1 fp0 tn1 (acc 1/2) -> acc 1/2; female 1
    assert attr["gaps"]["dAcc"] == approx(50.0)
    # with min_group_size 3 no subgroup qualifies -> no gap at all
    r = fairness_report(y_true, y_pred, ["S"] * 6, {"sex": sex}, YN, min_group_size=3)
    assert r["per_source"]["S"]["attributes"]["sex"]["gaps"] is None
    assert r["summary"]["PP"] is None
    assert r["summary"]["F1_ES"] is None
    assert r["summary"]["F1"] is not None


def test_matches_fairlearn_per_class_rates() -> None:
    from fairlearn.metrics import MetricFrame, false_positive_rate, true_positive_rate
    from sklearn.metrics import f1_score

    y_true = ["yes", "no", "yes", "yes", "no", "no", "yes", "no", "yes", "no"]
    y_pred = ["yes", "yes", "no", "yes", "no", "no", "yes", "yes", "no", "no"]
    sex = ["f", "f", "f", "f", "f", "m", "m", "m", "m", "m"]
    r = fairness_report(y_true, y_pred, ["S"] * 10, {"sex": sex}, YN)
    subs = r["per_source"]["S"]["attributes"]["sex"]["subgroups"]
    for cls in YN:
        frame = MetricFrame(
            metrics={
                "tpr": lambda t, p, c=cls: true_positive_rate(t, p, pos_label=c),
                "fpr": lambda t, p, c=cls: false_positive_rate(t, p, pos_label=c),
            },
            y_true=y_true,
            y_pred=y_pred,
            sensitive_features=sex,
        )
        for g in ("f", "m"):
            assert subs[g]["per_class"][cls]["tpr"] == approx(frame.by_group.loc[g, "tpr"])
            assert subs[g]["per_class"][cls]["fpr"] == approx(frame.by_group.loc[g, "fpr"])
    for g in ("f", "m"):
        idx = [i for i, s in enumerate(sex) if s == g]
        sk = f1_score([y_true[i] for i in idx], [y_pred[i] for i in idx], labels=YN, average="macro")
        assert subs[g]["f1"] == approx(sk)


def test_patient_outcome_changes() -> None:
    before = [True, True, False, False, True, False]
    after = [True, False, True, False, True, True]
    groups = ["a", "a", "a", "b", "b", None]
    out = patient_outcome_changes(before, after, groups)
    assert out["per_group"]["a"] == {
        "n": 3,
        "became_correct": 1,
        "became_incorrect": 1,
        "stayed_correct": 1,
        "stayed_incorrect": 0,
        "net": 0,
    }
    assert out["per_group"]["b"]["stayed_incorrect"] == 1
    assert out["per_group"]["unknown"]["became_correct"] == 1
    assert out["total"]["n"] == 6
    assert out["total"]["net"] == 2 - 1
    with pytest.raises(ValueError):
        patient_outcome_changes([True], [True, False], ["a"])


def _records() -> list[dict]:
    rows = [
        ("yes", "S1", "female", "26-50"),
        ("no", "S1", "female", "51-75"),
        ("yes", "S1", "male", "26-50"),
        ("no", "S1", "male", "51-75"),
        ("yes", "S2", "male", "unknown"),
        ("no", "S2", "female", "51-75"),
    ]
    return [
        {
            "answer": ans,
            "source": src,
            "attributes": {"sex": sex, "age": age},
            "true_group": None if "unknown" in (sex, age) else f"{sex}|{age}",
            "classes": YN,
        }
        for ans, src, sex, age in rows
    ]


def test_report_for_records_markdown_history_and_plot(tmp_path: Path) -> None:
    recs = _records()
    before = fairness_report_for_records(recs, ["yes"] * 6)
    after = fairness_report_for_records(recs, ["yes", "no", "yes", "no", "no", None])
    assert set(after["per_group"]) == {"female|26-50", "female|51-75", "male|26-50", "male|51-75", "unknown"}
    text = report_markdown(after, before=before, reference={"PP": 11.67, "F1": 0.3218})
    assert "| PP ↓ |" in text and "11.67" in text
    assert "S2" in text and "→" in text
    assert "female\\|26-50" in text  # the group separator is escaped inside the table
    assert "invalid answers" in text
    plain = report_markdown(after)
    assert "| metric | value |" in plain
    history = [history_entry(0, before), history_entry(5, after)]
    assert history[1]["per_group_f1"]["female|51-75"] == approx(after["per_group"]["female|51-75"]["f1"])
    png = plot_metric_history(history, tmp_path / "plots" / "history.png")
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    json.dumps([before, after, history], allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["yes", "no"]),
            st.sampled_from(["yes", "no", None, "junk"]),
            st.sampled_from(["A", "B"]),
            st.sampled_from(["f", "m", "unknown"]),
            st.sampled_from(["x", "y", "z"]),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_report_invariants(rows: list[tuple[str, str | None, str, str, str]]) -> None:
    y_true, y_pred, src, sex, age = (list(c) for c in zip(*rows, strict=True))
    r = fairness_report(y_true, y_pred, src, {"sex": sex, "age": age}, YN)
    json.dumps(r, allow_nan=False)
    for key in ("PP", "EOD", "FPR_Diff", "dF1", "sF1", "dAcc", "sAcc"):
        value = r["summary"][key]
        assert value is None or value >= 0.0
    for source in r["per_source"].values():
        for attr in source["attributes"].values():
            g = attr["gaps"]
            if g is not None and g["dF1"] is not None:
                assert g["sF1"] <= g["dF1"] + 1e-12  # a sample std never exceeds the range
    m = r["overall"]
    for key in ("accuracy", "f1", "tpr", "fpr", "precision"):
        assert m[key] is None or 0.0 <= m[key] <= 1.0
