"""Clinical tables as GRPO prompts: loading, prompt rendering, demographic groups and splits.

Implements the data layer described in ``spec/DATA.md``: a table (the bundled UCI Heart Disease
data, or a user's CSV / JSON lines / Parquet / ``datasets`` directory) becomes one record per row
with a text prompt, a checkable answer (``\\boxed{yes}`` / ``\\boxed{no}`` or a class name), the
row's data source, and its demographic group -- the intersection of sex and an age bin
(<=25, 26-50, 51-75, >75) as in FairGRPO (arXiv 2510.19893). Missing values render as
``"unknown"``; rows are never dropped silently, and the label and id columns never reach the
prompt.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import datasets

__all__ = [
    "DEFAULT_TEMPLATE",
    "GENERIC_TEMPLATE",
    "HEART_CSV",
    "HEART_FEATURE_NAMES",
    "UNKNOWN",
    "DataError",
    "TableSpec",
    "age_bin_label",
    "build_records",
    "heart_disease_spec",
    "hide_groups",
    "load_records",
    "load_table",
    "num_positive",
    "table_spec",
    "to_dataset",
    "train_test_split_records",
]

UNKNOWN = "unknown"
"""How a missing value is written in prompts and attributes."""

ACCEPTED_FORMATS = (
    ".csv, .tsv, .jsonl / .json (JSON lines or a JSON array of objects), .parquet, "
    "or a directory written by datasets' save_to_disk"
)

DEFAULT_TEMPLATE = "Patient: {features}. Heart disease? Answer with {classes}."
"""The heart-disease prompt. Placeholders: ``{features}``, ``{classes}`` (the boxed answer
options, e.g. ``\\boxed{yes} or \\boxed{no}``), ``{class_list}`` (``yes, no``), ``{target}``
(the label column's pretty name)."""

GENERIC_TEMPLATE = "Patient: {features}. Diagnosis? Answer with {classes}."
"""The prompt for a user table (same placeholders as :data:`DEFAULT_TEMPLATE`)."""

HEART_FEATURE_NAMES: dict[str, str] = {
    "age": "age",
    "sex": "sex",
    "cp": "chest pain",
    "trestbps": "resting blood pressure (mm Hg)",
    "chol": "cholesterol (mg/dl)",
    "fbs": "fasting blood sugar > 120",
    "restecg": "resting ECG",
    "thalch": "max heart rate",
    "exang": "exercise angina",
    "oldpeak": "ST depression",
    "slope": "ST slope",
    "ca": "major vessels coloured",
    "thal": "thalassemia",
}
"""Pretty names of the heart columns; a trailing ``(unit)`` is written after the value."""

HEART_MISSING_VALUES: dict[str, tuple[Any, ...]] = {"chol": (0,), "trestbps": (0,)}
"""Codes that mean "not measured" in the heart data (cholesterol 0 at Switzerland, one blood
pressure of 0): rendered as ``unknown`` like an empty cell."""


class DataError(ValueError):
    """A table, column or record that cannot be turned into training data (message says why)."""


def num_positive(value: Any) -> bool:
    """The heart-disease label: ``num > 0`` (any narrowing of a major vessel) means disease."""
    try:
        return float(value) > 0
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"label value {value!r} is not a number, so 'num > 0' cannot be applied; for a table "
            "whose labels are class names use positive=None (or positive_label=... to map one "
            "value to 'yes' and the rest to 'no')"
        ) from exc


@dataclass
class TableSpec:
    """How to turn a table into records. The defaults describe the bundled heart data.

    Parameters:
        label_column: the column holding the label (never shown in the prompt).
        positive: a function raw label -> bool giving answers ``yes`` / ``no``; ``None`` uses
            the label values themselves (as strings) as class names.
        positive_label: if set, rows whose label equals it (compared as strings) are ``yes``,
            all others ``no``; takes precedence over ``positive``.
        source_column: the data-source column (``None``: every row has source ``"all"``).
        group_columns: the demographic attributes; the group is their values joined by ``|``.
        age_column: the column binned by ``age_bins`` when it is one of ``group_columns``.
        age_bins: right-inclusive bin edges; (25, 50, 75) gives 0-25, 26-50, 51-75, >75.
        feature_columns: columns written into the prompt (``None``: all but id, label, source
            and ``drop_columns``).
        id_column: the patient-id column (``None``: the row number).
        drop_columns: columns left out of the prompt.
        prompt_template: ``str.format`` template (see :data:`DEFAULT_TEMPLATE`).
        chat: make ``prompt`` a list of chat messages instead of a string.
        hide_groups: records get ``group=None`` (FairGRPO then clusters them) but keep
            ``true_group`` and ``attributes`` for evaluation.
        feature_names: pretty names per column; ``"name (unit)"`` renders ``name VALUE unit``.
        missing_values: per column, raw values that mean "missing" (rendered ``unknown``).
        value_labels: per column, a map from the rendered value to a readable one
            (e.g. ``{"gender": {"0": "female", "1": "male"}}``); applies to prompts and groups.
        classes: the class names in a fixed order (``None``: ``yes, no`` for binary specs,
            else the sorted label values).
        lowercase: lower-case string values in prompts and attributes.
    """

    label_column: str = "num"
    positive: Callable[[Any], bool] | None = num_positive
    positive_label: str | None = None
    source_column: str | None = "dataset"
    group_columns: tuple[str, ...] = ("sex", "age")
    age_column: str | None = "age"
    age_bins: tuple[float, ...] = (25, 50, 75)
    feature_columns: tuple[str, ...] | None = None
    id_column: str | None = "id"
    drop_columns: tuple[str, ...] = ()
    prompt_template: str = DEFAULT_TEMPLATE
    chat: bool = False
    hide_groups: bool = False
    feature_names: dict[str, str] = field(default_factory=lambda: dict(HEART_FEATURE_NAMES))
    missing_values: dict[str, tuple[Any, ...]] = field(default_factory=lambda: dict(HEART_MISSING_VALUES))
    value_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None
    lowercase: bool = True

    @property
    def binary(self) -> bool:
        """Whether answers are ``yes`` / ``no`` (a positive rule is set)."""
        return self.positive_label is not None or self.positive is not None


def heart_disease_spec() -> TableSpec:
    """The spec of the bundled UCI Heart Disease table (label ``num > 0``, sources = sites)."""
    return TableSpec()


def table_spec(
    label_column: str,
    *,
    source_column: str | None = None,
    group_columns: Sequence[str] = (),
    age_column: str | None = None,
    positive_label: str | None = None,
    id_column: str | None = None,
    **overrides: Any,
) -> TableSpec:
    """A spec for a user table: class names from the label values (or yes/no with
    ``positive_label``), no heart-specific names, missing codes or question.

    >>> table_spec("cens", group_columns=("race", "gender")).positive is None
    True
    """
    return TableSpec(
        label_column=label_column,
        positive=None,
        positive_label=positive_label,
        source_column=source_column,
        group_columns=tuple(group_columns),
        age_column=age_column,
        id_column=id_column,
        prompt_template=GENERIC_TEMPLATE,
        feature_names={},
        missing_values={},
        **overrides,
    )


def _heart_csv() -> Path:
    resource = importlib.resources.files(__package__ or "fairgrpo").joinpath("data", "heart_disease_uci.csv")
    return resource if isinstance(resource, Path) else Path(str(resource))


HEART_CSV: Path = _heart_csv()
"""The bundled UCI Heart Disease CSV (920 rows, 4 sites; CC BY 4.0, see data/ATTRIBUTION.md)."""


# ----------------------------------------------------------------------------- loading


def load_table(path: str | Path) -> pd.DataFrame:
    """Read a table from ``.csv``, ``.tsv``, ``.jsonl``/``.json``, ``.parquet`` or a
    ``datasets.save_to_disk`` directory.

    Raises:
        DataError: the path does not exist, its format is unknown or it cannot be read.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file {str(p)!r} does not exist; accepted formats: {ACCEPTED_FORMATS}")
    try:
        if p.is_dir():
            return _load_datasets_dir(p)
        suffixes = [s.lower() for s in p.suffixes]
        if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst", ".zip"):
            suffixes = suffixes[:-1]
        ext = suffixes[-1] if suffixes else ""
        if ext == ".csv":
            return pd.read_csv(p)
        if ext == ".tsv":
            return pd.read_csv(p, sep="\t")
        if ext in (".jsonl", ".json", ".ndjson"):
            # dtype=False: a true/false column with nulls stays boolean instead of becoming 1.0/0.0
            return pd.read_json(p, lines=not _is_json_array(p), dtype=False)
        if ext in (".parquet", ".pq"):
            return pd.read_parquet(p)
    except DataError:
        raise
    except Exception as exc:  # any reader failure becomes one clear message
        raise DataError(
            f"cannot read {str(p)!r} ({type(exc).__name__}: {exc}); accepted formats: {ACCEPTED_FORMATS}"
        ) from exc
    raise DataError(f"unknown data format for {str(p)!r}; accepted formats: {ACCEPTED_FORMATS}")


def _is_json_array(p: Path) -> bool:
    """Whether a JSON file holds one array (``[{...}, ...]``) rather than JSON lines."""
    if p.suffix.lower() != ".json":
        return False
    with p.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _load_datasets_dir(p: Path) -> pd.DataFrame:
    import datasets  # deferred: a slow import only the directory format needs

    loaded = datasets.load_from_disk(str(p))
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise DataError(
                f"{str(p)!r} holds a DatasetDict with splits {sorted(loaded)}; save a single split "
                "(e.g. dataset_dict['train'].save_to_disk(...)) or pass that split's directory"
            )
        loaded = next(iter(loaded.values()))
    if not isinstance(loaded, datasets.Dataset):
        raise DataError(f"{str(p)!r} does not hold a datasets.Dataset; accepted formats: {ACCEPTED_FORMATS}")
    frame = loaded.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    return frame


# ----------------------------------------------------------------------------- rendering


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays / lists: not a scalar missing marker
        return False


def _format_value(value: Any, lowercase: bool) -> str:
    """A raw cell as compact text (no missing handling)."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if f.is_integer() and abs(f) < 1e15:
            return str(int(f))
        return f"{f:.6g}"
    text = " ".join(str(value).split())
    return text.lower() if lowercase else text


def _render(column: str, value: Any, spec: TableSpec) -> str:
    """A cell as text: ``unknown`` if missing, else formatted and relabelled."""
    if _is_missing(value) or _in_missing_codes(value, spec.missing_values.get(column, ())):
        return UNKNOWN
    text = _format_value(value, spec.lowercase)
    labels = spec.value_labels.get(column)
    if labels:
        text = labels.get(text, text)
    return text


def _in_missing_codes(value: Any, codes: tuple[Any, ...]) -> bool:
    for code in codes:
        try:
            if value == code:
                return True
        except (TypeError, ValueError):
            continue
    return False


def age_bin_label(age: Any, edges: Sequence[float] = (25, 50, 75)) -> str | None:
    """The age bin of ``age`` for right-inclusive ``edges``; ``None`` when not a number.

    >>> [age_bin_label(a) for a in (25, 26, 50, 51, 75, 76)]
    ['0-25', '26-50', '26-50', '51-75', '51-75', '>75']
    """
    if isinstance(age, bool) or _is_missing(age):
        return None
    try:
        a = float(age)
    except (TypeError, ValueError):
        return None
    if math.isnan(a):
        return None
    if not edges:
        return _format_value(a, True)
    integral = all(float(e).is_integer() for e in edges)

    def fmt(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    if a <= edges[0]:
        return f"0-{fmt(edges[0])}" if edges[0] >= 0 else f"<={fmt(edges[0])}"
    for lo, hi in itertools.pairwise(edges):
        if a <= hi:
            return f"{fmt(lo + 1) if integral else fmt(lo)}-{fmt(hi)}"
    return f">{fmt(edges[-1])}"


def _pretty(column: str, spec: TableSpec) -> tuple[str, str | None]:
    """(name, unit) for a column: ``"resting blood pressure (mm Hg)"`` -> name, ``"mm Hg"``."""
    name = spec.feature_names.get(column, column.replace("_", " "))
    if name.endswith(")") and " (" in name:
        base, unit = name[:-1].rsplit(" (", 1)
        return base, unit
    return name, None


def _class_options(classes: Sequence[str]) -> str:
    boxed = [f"\\boxed{{{c}}}" for c in classes]
    if len(boxed) <= 2:
        return " or ".join(boxed)
    return ", ".join(boxed[:-1]) + " or " + boxed[-1]


# ----------------------------------------------------------------------------- records


def _check_columns(df: pd.DataFrame, spec: TableSpec) -> list[str]:
    """Validate the spec against the table; return the feature columns."""
    available = [str(c) for c in df.columns]

    def need(column: str, role: str) -> None:
        if column not in df.columns:
            shown = ", ".join(available[:40]) + (
                f", ... ({len(available) - 40} more)" if len(available) > 40 else ""
            )
            raise DataError(f"column {column!r} ({role}) not found in the table; available columns: {shown}")

    need(spec.label_column, "label_column")
    if spec.source_column is not None:
        need(spec.source_column, "source_column")
    if spec.id_column is not None:
        need(spec.id_column, "id_column")
    for c in spec.group_columns:
        need(c, "group_columns")
    for c in spec.drop_columns:
        need(c, "drop_columns")
    hidden = {spec.label_column, spec.id_column}
    if spec.feature_columns is None:
        excluded = hidden | {spec.source_column} | set(spec.drop_columns)
        features = [c for c in available if c not in excluded]
    else:
        features = list(spec.feature_columns)
        for c in features:
            need(c, "feature_columns")
            if c in hidden:
                raise DataError(
                    f"column {c!r} is the label or id column and cannot be a feature (it would leak "
                    "the answer or identify the patient); remove it from feature_columns"
                )
        features = [c for c in features if c not in set(spec.drop_columns)]
    return features


def _answers(labels: pd.Series, spec: TableSpec) -> tuple[list[str], list[str]]:
    """(answer per row, class names) from the raw label column."""
    missing = [i for i, v in enumerate(labels.tolist()) if _is_missing(v)]
    if missing:
        raise DataError(
            f"label column {spec.label_column!r} is empty in {len(missing)} row(s) (first row numbers: "
            f"{missing[:5]}); remove or fill those rows before training"
        )
    raw = labels.tolist()
    if spec.positive_label is not None:
        wanted = str(spec.positive_label).strip()
        rendered = [_format_value(v, False) for v in raw]
        if wanted not in rendered:
            raise DataError(
                f"positive_label {wanted!r} does not occur in label column {spec.label_column!r}; "
                f"values found: {sorted(set(rendered))[:20]}"
            )
        answers = ["yes" if r == wanted else "no" for r in rendered]
    elif spec.positive is not None:
        answers = ["yes" if spec.positive(v) else "no" for v in raw]
    else:
        answers = [_format_value(v, False) for v in raw]
    if spec.classes is not None:
        classes = list(spec.classes)
        unknown = sorted(set(answers) - set(classes))
        if unknown:
            raise DataError(f"label values {unknown} are not among the spec's classes {classes}")
    elif spec.binary:
        classes = ["yes", "no"]
    else:
        classes = sorted(set(answers))
    return answers, classes


def build_records(df: pd.DataFrame, spec: TableSpec | None = None) -> list[dict[str, Any]]:
    """One record per row of ``df``.

    Each record has ``prompt`` (str, or ``[{"role": "user", "content": ...}]`` if
    ``spec.chat``), ``answer`` (class name), ``source``, ``group`` (``"female|51-75"``;
    ``None`` if a demographic value is missing or ``spec.hide_groups``), ``true_group`` (the
    group even when hidden), ``attributes`` (attribute -> value, ``"unknown"`` when missing),
    ``patient_id`` and ``classes``.

    Raises:
        DataError: a column named by the spec is missing, a label is empty, or the template
            is malformed.
    """
    spec = spec if spec is not None else heart_disease_spec()
    features = _check_columns(df, spec)
    answers, classes = _answers(df[spec.label_column], spec)
    options = _class_options(classes)
    target = _pretty(spec.label_column, spec)[0]
    names = {c: _pretty(c, spec) for c in features}
    binned = spec.age_column if spec.age_column in spec.group_columns else None

    records: list[dict[str, Any]] = []
    rows = df.to_dict("records")
    for i, (row, answer) in enumerate(zip(rows, answers, strict=True)):
        parts = []
        for c in features:
            name, unit = names[c]
            value = _render(c, row[c], spec)
            parts.append(f"{name} {value} {unit}" if unit and value != UNKNOWN else f"{name} {value}")
        try:
            text = spec.prompt_template.format(
                features=", ".join(parts), classes=options, class_list=", ".join(classes), target=target
            )
        except (KeyError, IndexError, ValueError) as exc:
            raise DataError(
                f"prompt_template {spec.prompt_template!r} is malformed ({exc!r}); it may use "
                "{features}, {classes}, {class_list} and {target}; write literal braces as {{ }}"
            ) from exc

        attributes: dict[str, str] = {}
        for c in spec.group_columns:
            value = _render(c, row[c], spec)
            if c == binned and value != UNKNOWN:
                # a non-numeric age is taken as an already-binned category
                value = age_bin_label(row[c], spec.age_bins) or value
            attributes[c] = value
        values = list(attributes.values())
        true_group = "|".join(values) if values and UNKNOWN not in values else None

        source = "all"
        if spec.source_column is not None:  # sources keep their case ("VA Long Beach")
            raw_source = row[spec.source_column]
            source = UNKNOWN if _is_missing(raw_source) else _format_value(raw_source, False)
        pid = _format_value(row[spec.id_column], False) if spec.id_column else str(i)
        records.append(
            {
                "prompt": [{"role": "user", "content": text}] if spec.chat else text,
                "answer": answer,
                "source": source,
                "group": None if spec.hide_groups else true_group,
                "true_group": true_group,
                "attributes": attributes,
                "patient_id": pid,
                "classes": list(classes),
            }
        )
    return records


def hide_groups(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``records`` with ``group=None`` (``true_group`` and ``attributes`` kept): the
    training side of a run whose algorithm must not see demographics (FairGRPO-ND)."""
    return [{**r, "group": None} for r in records]


def load_records(
    path: str | Path | None = None,
    spec: TableSpec | None = None,
    *,
    chat: bool | None = None,
    hide_groups: bool | None = None,
) -> list[dict[str, Any]]:
    """Load a table and build its records; ``path=None`` is the bundled heart data.

    ``chat`` / ``hide_groups`` override the spec's fields when given.
    """
    spec = spec if spec is not None else heart_disease_spec()
    overrides: dict[str, Any] = {}
    if chat is not None:
        overrides["chat"] = chat
    if hide_groups is not None:
        overrides["hide_groups"] = hide_groups
    if overrides:
        spec = dataclasses.replace(spec, **overrides)
    df = load_table(HEART_CSV if path is None else path)
    try:
        return build_records(df, spec)
    except DataError as exc:
        where = "the bundled heart data" if path is None else repr(str(path))
        raise DataError(f"{where}: {exc}") from exc


# ----------------------------------------------------------------------------- splitting


def _allocate(sizes: list[int], total: int) -> list[int]:
    """Split ``total`` over strata in proportion to ``sizes`` (largest remainder)."""
    n = sum(sizes)
    exact = [s * total / n for s in sizes]
    counts = [math.floor(e) for e in exact]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def train_test_split_records(
    records: Sequence[dict[str, Any]], test_size: float = 0.25, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Stratified, deterministic train/test split.

    Records are stratified by (source, true group, answer); a stratum too small to put at
    least one record on each side falls back to (source, answer), then (answer), then one
    pool. Each stratum contributes its share of the ``round(test_size * n)`` test records.
    Both lists keep the input order.
    """
    n = len(records)
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be a fraction strictly between 0 and 1, got {test_size!r}")
    if n < 2:
        raise DataError(f"cannot split {n} record(s) into train and test; need at least 2")
    min_size = max(2, math.ceil(1.0 / min(test_size, 1.0 - test_size) - 1e-9))
    levels: list[Callable[[dict[str, Any]], tuple[str, ...]]] = [
        lambda r: (str(r.get("source")), str(r.get("true_group")), str(r.get("answer"))),
        lambda r: (str(r.get("source")), str(r.get("answer"))),
        lambda r: (str(r.get("answer")),),
    ]
    strata: dict[tuple[str, ...], list[int]] = defaultdict(list)
    remaining = list(range(n))
    for level, key_of in enumerate(levels):
        counts = Counter(key_of(records[i]) for i in remaining)
        left = []
        for i in remaining:
            key = key_of(records[i])
            if counts[key] >= min_size:
                strata[(str(level), *key)].append(i)
            else:
                left.append(i)
        remaining = left
    if remaining:
        strata[("rest",)].extend(remaining)

    keys = sorted(strata)
    n_test = min(max(round(test_size * n), 1), n - 1)
    quotas = _allocate([len(strata[k]) for k in keys], n_test)
    rng = np.random.default_rng(seed)
    test_idx: set[int] = set()
    for key, quota in zip(keys, quotas, strict=True):
        members = strata[key]
        picked = rng.permutation(len(members))[:quota]
        test_idx.update(members[j] for j in picked)
    train = [records[i] for i in range(n) if i not in test_idx]
    test = [records[i] for i in range(n) if i in test_idx]
    return train, test


# ----------------------------------------------------------------------------- datasets


def to_dataset(records: Sequence[Mapping[str, Any]]) -> datasets.Dataset:
    """A ``datasets.Dataset`` with columns prompt, answer, source, group, true_group,
    patient_id, classes and one ``attr_<name>`` column per attribute (TRL passes the extra
    columns to reward functions as keyword arguments)."""
    import datasets  # deferred: a slow import

    names: list[str] = []
    for r in records:
        for a in r.get("attributes", {}):
            if a not in names:
                names.append(a)
    string_columns = ["answer", "source", "group", "true_group", "patient_id"] + [f"attr_{a}" for a in names]
    columns: dict[str, list[Any]] = {c: [] for c in ["prompt", *string_columns, "classes"]}
    for r in records:
        columns["prompt"].append(r["prompt"])
        for c in ("answer", "source", "group", "true_group", "patient_id"):
            value = r.get(c)
            columns[c].append(None if value is None else str(value))
        attrs = r.get("attributes", {})
        for a in names:
            columns[f"attr_{a}"].append(str(attrs.get(a, UNKNOWN)))
        columns["classes"].append([str(c) for c in r.get("classes", [])])
    if records and isinstance(records[0]["prompt"], str):
        prompt_feature: Any = datasets.Value("string")
    else:
        prompt_feature = datasets.List(
            {"role": datasets.Value("string"), "content": datasets.Value("string")}
        )
    features = datasets.Features(
        {
            "prompt": prompt_feature,
            **{c: datasets.Value("string") for c in string_columns},
            "classes": datasets.List(datasets.Value("string")),
        }
    )
    return datasets.Dataset.from_dict(columns, features=features)
