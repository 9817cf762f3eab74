"""The feature catalog: its built-in features, config validation and event filters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from models.catalog import (
    Catalog,
    CatalogError,
    EventFilter,
    FeatureSpec,
    catalog_from_config,
    default_catalog,
    load_catalog,
)

DEFAULT_NAMES = [
    *(
        f"{stem}_{w}d"
        for w in (7, 30, 90)
        for stem in (
            "events",
            "sessions",
            "feature_uses",
            "distinct_features",
            "purchases",
            "revenue",
            "support_tickets",
            "email_opens",
            "active_days",
        )
    ),
    *(
        f"{stem}_lifetime"
        for stem in (
            "events",
            "sessions",
            "feature_uses",
            "purchases",
            "revenue",
            "support_tickets",
            "active_days",
        )
    ),
    "days_since_last_event",
    "days_since_last_purchase",
    "tenure_days",
    "avg_order_value_90d",
    "purchase_span_days",
    "avg_days_between_purchases",
]

EXPORTS_TOML = """
[catalog]

[[catalog.features]]
name = "exports_30d"
aggregation = "count"
window_days = 30
filter = { types = ["feature_used"], where = { feature = "export" } }
description = "exports, last 30 days"
"""


def config_error(*features: dict[str, Any], **section: Any) -> str:
    with pytest.raises(CatalogError) as info:
        catalog_from_config({**section, "features": list(features)})
    return str(info.value)


# --- the default catalog -----------------------------------------------------------------


def test_default_catalog_names_in_order() -> None:
    names = default_catalog().names
    assert len(names) == 40
    assert list(names) == DEFAULT_NAMES
    assert names[:9] == (
        "events_7d",
        "sessions_7d",
        "feature_uses_7d",
        "distinct_features_7d",
        "purchases_7d",
        "revenue_7d",
        "support_tickets_7d",
        "email_opens_7d",
        "active_days_7d",
    )


def test_default_catalog_definitions() -> None:
    specs = {s.name: s for s in default_catalog().features}
    assert specs["revenue_30d"].aggregation == "sum"
    assert specs["revenue_30d"].property == "amount"
    assert specs["revenue_30d"].filter.types == ("purchase",)
    assert specs["distinct_features_90d"].aggregation == "distinct"
    assert specs["distinct_features_90d"].property == "feature"
    assert specs["events_7d"].filter == EventFilter()
    assert specs["active_days_30d"].filter == EventFilter()
    assert specs["days_since_last_purchase"].filter.types == ("purchase",)
    assert specs["days_since_last_event"].filter == EventFilter()
    assert specs["days_since_last_event"].cap_days == 365
    aov = specs["avg_order_value_90d"]
    assert (aov.aggregation, aov.numerator, aov.denominator) == (
        "ratio",
        "revenue_90d",
        "purchases_90d",
    )
    assert default_catalog().retention_days == 90


def test_load_catalog_without_path_is_the_default() -> None:
    assert load_catalog(None) == default_catalog()
    assert catalog_from_config({}).names == default_catalog().names


# --- invalid catalogs --------------------------------------------------------------------


def test_duplicate_name() -> None:
    msg = config_error({"name": "events_7d", "aggregation": "count", "window_days": 7})
    assert "'events_7d'" in msg
    assert "twice" in msg


def test_duplicate_name_among_user_features() -> None:
    spec = {"name": "logins_7d", "aggregation": "count", "window_days": 7}
    assert "'logins_7d'" in config_error(spec, spec)


def test_duplicate_name_in_catalog_constructor() -> None:
    spec = FeatureSpec(name="x", aggregation="tenure")
    with pytest.raises(CatalogError, match="'x'"):
        Catalog(features=(spec, spec))


def test_ratio_with_undeclared_feature() -> None:
    msg = config_error(
        {
            "name": "per_ticket",
            "aggregation": "ratio",
            "numerator": "revenue_90d",
            "denominator": "tickets_ever",
        }
    )
    assert "'per_ticket'" in msg
    assert "'tickets_ever'" in msg


def test_ratio_must_follow_its_parts() -> None:
    later = {"name": "logins_30d", "aggregation": "count", "window_days": 30}
    ratio = {
        "name": "logins_per_session",
        "aggregation": "ratio",
        "numerator": "logins_30d",
        "denominator": "sessions_30d",
    }
    assert "'logins_per_session'" in config_error(ratio, later)
    assert catalog_from_config({"features": [later, ratio]}).names[-1] == "logins_per_session"


def test_ratio_needs_both_parts() -> None:
    msg = config_error({"name": "half", "aggregation": "ratio", "numerator": "events_7d"})
    assert "'half'" in msg
    assert "denominator" in msg


def test_window_longer_than_retention() -> None:
    msg = config_error({"name": "events_120d", "aggregation": "count", "window_days": 120})
    assert "'events_120d'" in msg
    assert "120" in msg
    assert "90" in msg


def test_longer_retention_allows_longer_window() -> None:
    cat = catalog_from_config(
        {
            "retention_days": 180,
            "features": [{"name": "events_120d", "aggregation": "count", "window_days": 120}],
        }
    )
    assert cat.retention_days == 180
    assert cat.names[-1] == "events_120d"


def test_retention_shorter_than_default_windows() -> None:
    with pytest.raises(CatalogError, match="events_90d"):
        catalog_from_config({"retention_days": 30})


@pytest.mark.parametrize("retention", [0, -1, 1.5, "90"])
def test_bad_retention(retention: Any) -> None:
    with pytest.raises(CatalogError, match="retention_days"):
        catalog_from_config({"retention_days": retention})


def test_sum_without_property() -> None:
    msg = config_error({"name": "spend_30d", "aggregation": "sum", "window_days": 30})
    assert "'spend_30d'" in msg
    assert "property" in msg


def test_distinct_without_property() -> None:
    msg = config_error({"name": "kinds_30d", "aggregation": "distinct", "window_days": 30})
    assert "'kinds_30d'" in msg
    assert "property" in msg


@pytest.mark.parametrize("name", ["Exports_30d", "exports-30d", "30d_exports", "", "a" * 65])
def test_bad_name(name: str) -> None:
    msg = config_error({"name": name, "aggregation": "count", "window_days": 30})
    assert repr(name) in msg
    assert "name" in msg


def test_unknown_aggregation() -> None:
    msg = config_error({"name": "median_spend", "aggregation": "median", "window_days": 30})
    assert "'median_spend'" in msg
    assert "aggregation" in msg


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"name": "w", "aggregation": "count"}, "window_days"),
        ({"name": "w", "aggregation": "count", "window_days": 0}, "window_days"),
        ({"name": "w", "aggregation": "tenure", "window_days": 7}, "window_days"),
        ({"name": "w", "aggregation": "count", "window_days": 7, "windw": 1}, "windw"),
        (
            {"name": "w", "aggregation": "tenure", "filter": {"types": ["purchase"]}},
            "first event",
        ),
    ],
)
def test_other_inconsistent_specs(spec: dict[str, Any], words: str) -> None:
    msg = config_error(spec)
    assert "'w'" in msg
    assert words in msg


def test_feature_spec_rejects_directly() -> None:
    with pytest.raises(ValueError, match="'spend_30d'"):
        FeatureSpec(name="spend_30d", aggregation="sum", window_days=30)


def test_error_names_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "segstream.toml"
    path.write_text(
        '[[catalog.features]]\nname = "spend_30d"\naggregation = "sum"\nwindow_days = 30\n'
    )
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert str(path) in str(info.value)
    assert "'spend_30d'" in str(info.value)


def test_broken_toml_is_a_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[catalog\nretention_days = 90\n")
    with pytest.raises(CatalogError, match=r"broken\.toml"):
        load_catalog(path)


def test_missing_config_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"nope\.toml"):
        load_catalog(tmp_path / "nope.toml")


# --- user features -----------------------------------------------------------------------


def test_toml_user_feature_loads(tmp_path: Path) -> None:
    path = tmp_path / "segstream.toml"
    path.write_text(EXPORTS_TOML)
    cat = load_catalog(path)
    assert list(cat.names) == [*DEFAULT_NAMES, "exports_30d"]
    spec = cat.features[-1]
    assert spec.aggregation == "count"
    assert spec.window_days == 30
    assert spec.filter == EventFilter(types=("feature_used",), where={"feature": "export"})
    assert spec.description == "exports, last 30 days"
    assert "| `exports_30d` | count | feature_used where feature='export' | 30 d |" in (
        cat.markdown_table()
    )


def test_toml_user_features_of_every_kind(tmp_path: Path) -> None:
    path = tmp_path / "segstream.toml"
    path.write_text(
        EXPORTS_TOML
        + """
[[catalog.features]]
name = "seats_added_30d"
aggregation = "sum"
window_days = 30
property = "seats"
filter = { types = ["seats_added"] }

[[catalog.features]]
name = "exports_per_session_30d"
aggregation = "ratio"
numerator = "exports_30d"
denominator = "sessions_30d"

[[catalog.features]]
name = "days_since_last_ticket"
aggregation = "days_since_last"
filter = { types = ["support_ticket"] }
cap_days = 90
"""
    )
    cat = load_catalog(path)
    assert cat.names[-4:] == (
        "exports_30d",
        "seats_added_30d",
        "exports_per_session_30d",
        "days_since_last_ticket",
    )
    assert cat.features[-1].cap_days == 90


def test_fingerprint_is_stable(tmp_path: Path) -> None:
    path = tmp_path / "segstream.toml"
    path.write_text(EXPORTS_TOML)
    assert default_catalog().fingerprint == default_catalog().fingerprint
    assert default_catalog().fingerprint == catalog_from_config({}).fingerprint
    assert load_catalog(path).fingerprint == load_catalog(path).fingerprint
    assert len(default_catalog().fingerprint) == 64


def test_fingerprint_changes_when_a_feature_is_added(tmp_path: Path) -> None:
    path = tmp_path / "segstream.toml"
    path.write_text(EXPORTS_TOML)
    assert load_catalog(path).fingerprint != default_catalog().fingerprint


def test_fingerprint_changes_with_the_definition_not_the_description() -> None:
    spec = {
        "name": "exports_30d",
        "aggregation": "count",
        "window_days": 30,
        "filter": {"types": ["feature_used"], "where": {"feature": "export"}},
    }
    base = catalog_from_config({"features": [spec]}).fingerprint
    described = catalog_from_config({"features": [{**spec, "description": "other words"}]})
    assert described.fingerprint == base
    other_where = {**spec, "filter": {"types": ["feature_used"], "where": {"feature": "import"}}}
    assert catalog_from_config({"features": [other_where]}).fingerprint != base
    other_window = {**spec, "window_days": 7}
    assert catalog_from_config({"features": [other_window]}).fingerprint != base
    longer = catalog_from_config({"retention_days": 120, "features": [spec]})
    assert longer.fingerprint != base


# --- event filters -----------------------------------------------------------------------


def test_empty_filter_matches_everything() -> None:
    flt = EventFilter()
    assert flt.matches("signup", {})
    assert flt.matches("anything_at_all", {"x": 1})


def test_filter_types_are_any_of() -> None:
    flt = EventFilter(types=("purchase", "refund"))
    assert flt.matches("purchase", {})
    assert flt.matches("refund", {"amount": 3})
    assert not flt.matches("signup", {})
    assert not flt.matches("Purchase", {})


def test_filter_where_is_equality_on_every_key() -> None:
    flt = EventFilter(types=("feature_used",), where={"feature": "export", "plan": "pro"})
    assert flt.matches("feature_used", {"feature": "export", "plan": "pro", "other": 1})
    assert not flt.matches("feature_used", {"feature": "export", "plan": "free"})
    assert not flt.matches("feature_used", {"feature": "export"})  # missing key
    assert not flt.matches("session_start", {"feature": "export", "plan": "pro"})


def test_filter_where_without_types_applies_to_any_type() -> None:
    flt = EventFilter(where={"channel": "mobile"})
    assert flt.matches("session_start", {"channel": "mobile"})
    assert flt.matches("custom", {"channel": "mobile"})
    assert not flt.matches("session_start", {"channel": "web"})


def test_filter_true_is_not_one() -> None:
    flag = EventFilter(where={"trial": True})
    assert flag.matches("x", {"trial": True})
    assert not flag.matches("x", {"trial": 1})
    assert not flag.matches("x", {"trial": 1.0})
    assert not flag.matches("x", {"trial": "true"})
    one = EventFilter(where={"seats": 1})
    assert one.matches("x", {"seats": 1})
    assert one.matches("x", {"seats": 1.0})  # JSON has one number type
    assert not one.matches("x", {"seats": True})
    assert not one.matches("x", {"seats": "1"})
    off = EventFilter(where={"trial": False})
    assert not off.matches("x", {"trial": 0})
    assert not off.matches("x", {})


def test_filter_string_is_not_number() -> None:
    flt = EventFilter(where={"code": "1"})
    assert flt.matches("x", {"code": "1"})
    assert not flt.matches("x", {"code": 1})


def test_filter_rejects_unknown_keys_and_non_scalar_where() -> None:
    msg = config_error(
        {"name": "w", "aggregation": "count", "window_days": 7, "filter": {"type": ["x"]}}
    )
    assert "'w'" in msg
    msg = config_error(
        {
            "name": "w",
            "aggregation": "count",
            "window_days": 7,
            "filter": {"where": {"tags": ["a", "b"]}},
        }
    )
    assert "'w'" in msg


# --- markdown ----------------------------------------------------------------------------


def test_markdown_table_has_one_row_per_feature() -> None:
    table = default_catalog().markdown_table().splitlines()
    assert table[0] == "| feature | aggregation | events | window | what |"
    assert len(table) == 2 + 40
    assert table[2].startswith("| `events_7d` | count | any | 7 d |")
    assert "| `revenue_30d` | sum(`amount`) | purchase | 30 d |" in table[2 + 14]
    assert table[-3].startswith(
        "| `avg_order_value_90d` | ratio(revenue_90d / purchases_90d) | any | - |"
    )
    assert "| `revenue_lifetime` | sum(`amount`) | purchase | lifetime |" in table[2 + 31]


def test_a_user_feature_may_use_a_lifetime_window_but_not_for_distinct_values() -> None:
    cat = catalog_from_config(
        {"features": [{"name": "exports_lifetime", "aggregation": "count",
                       "window_days": "lifetime",
                       "filter": {"types": ["feature_used"], "where": {"feature": "export"}}}]}
    )  # fmt: skip
    spec = cat.features[-1]
    assert cat.base_column(spec).endswith("life") and cat.layout.lifetime
    msg = config_error(
        {"name": "kinds_ever", "aggregation": "distinct", "window_days": "lifetime",
         "property": "feature"}
    )  # fmt: skip
    assert "kinds_ever" in msg and "day windows only" in msg
