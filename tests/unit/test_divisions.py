"""GB/T 2260 bureau table of the Delta: routing to provincial nodes, names, refusals."""

from __future__ import annotations

import pytest

from federation.divisions import (
    ANHUI,
    BUREAUS,
    JIANGSU,
    OTHER_PROVINCES,
    PREFECTURE_LEVEL_UNITS,
    PROVINCES,
    SHANGHAI,
    ZHEJIANG,
    Bureau,
    bureau,
    bureaus_under,
    is_delta_bureau,
    normalize_division_code,
    province_of,
)
from federation.errors import ValidationError

# Independent routing table written out by hand: prefecture code -> (province, Chinese name).
EXPECTED_PREFECTURES: dict[str, tuple[str, str]] = {
    "320100": (JIANGSU, "南京市"),
    "320200": (JIANGSU, "无锡市"),
    "320300": (JIANGSU, "徐州市"),
    "320400": (JIANGSU, "常州市"),
    "320500": (JIANGSU, "苏州市"),
    "320600": (JIANGSU, "南通市"),
    "320700": (JIANGSU, "连云港市"),
    "320800": (JIANGSU, "淮安市"),
    "320900": (JIANGSU, "盐城市"),
    "321000": (JIANGSU, "扬州市"),
    "321100": (JIANGSU, "镇江市"),
    "321200": (JIANGSU, "泰州市"),
    "321300": (JIANGSU, "宿迁市"),
    "330100": (ZHEJIANG, "杭州市"),
    "330200": (ZHEJIANG, "宁波市"),
    "330300": (ZHEJIANG, "温州市"),
    "330400": (ZHEJIANG, "嘉兴市"),
    "330500": (ZHEJIANG, "湖州市"),
    "330600": (ZHEJIANG, "绍兴市"),
    "330700": (ZHEJIANG, "金华市"),
    "330800": (ZHEJIANG, "衢州市"),
    "330900": (ZHEJIANG, "舟山市"),
    "331000": (ZHEJIANG, "台州市"),
    "331100": (ZHEJIANG, "丽水市"),
    "340100": (ANHUI, "合肥市"),
    "340200": (ANHUI, "芜湖市"),
    "340300": (ANHUI, "蚌埠市"),
    "340400": (ANHUI, "淮南市"),
    "340500": (ANHUI, "马鞍山市"),
    "340600": (ANHUI, "淮北市"),
    "340700": (ANHUI, "铜陵市"),
    "340800": (ANHUI, "安庆市"),
    "341000": (ANHUI, "黄山市"),
    "341100": (ANHUI, "滁州市"),
    "341200": (ANHUI, "阜阳市"),
    "341300": (ANHUI, "宿州市"),
    "341500": (ANHUI, "六安市"),
    "341600": (ANHUI, "亳州市"),
    "341700": (ANHUI, "池州市"),
    "341800": (ANHUI, "宣城市"),
}

SHANGHAI_DISTRICTS: dict[str, str] = {
    "310101": "黄浦区",
    "310104": "徐汇区",
    "310105": "长宁区",
    "310106": "静安区",
    "310107": "普陀区",
    "310109": "虹口区",
    "310110": "杨浦区",
    "310112": "闵行区",
    "310113": "宝山区",
    "310114": "嘉定区",
    "310115": "浦东新区",
    "310116": "金山区",
    "310117": "松江区",
    "310118": "青浦区",
    "310120": "奉贤区",
    "310151": "崇明区",
}


def _refusal(code: str) -> ValidationError:
    with pytest.raises(ValidationError) as excinfo:
        province_of(code)
    return excinfo.value


def test_provinces() -> None:
    assert list(PROVINCES) == [SHANGHAI, JIANGSU, ZHEJIANG, ANHUI]
    assert [p.name_en for p in PROVINCES.values()] == ["Shanghai", "Jiangsu", "Zhejiang", "Anhui"]
    assert [p.place_zh for p in PROVINCES.values()] == ["上海市", "江苏省", "浙江省", "安徽省"]
    assert PROVINCES[JIANGSU].bureau_zh == "江苏省市场监督管理局"
    assert PROVINCES[SHANGHAI].bureau_zh == "上海市市场监督管理局"
    for code, node in PROVINCES.items():
        assert node.level == "province"
        assert node.province == code
        assert province_of(code) == code


@pytest.mark.parametrize(("code", "expected"), sorted(EXPECTED_PREFECTURES.items()))
def test_each_prefecture_routes_to_its_province(code: str, expected: tuple[str, str]) -> None:
    province, name = expected
    assert province_of(code) == province
    found = bureau(code)
    assert found.level == "prefecture"
    assert found.place_zh == name
    assert found.bureau_zh == name + "市场监督管理局"


@pytest.mark.parametrize(("code", "name"), sorted(SHANGHAI_DISTRICTS.items()))
def test_shanghai_districts_route_to_shanghai(code: str, name: str) -> None:
    assert province_of(code) == SHANGHAI
    found = bureau(code)
    assert found.level == "district"
    assert found.place_zh == name
    assert found.bureau_zh == "上海市" + name + "市场监督管理局"


def test_forty_one_prefecture_level_units() -> None:
    assert len(PREFECTURE_LEVEL_UNITS) == 41
    assert len(set(PREFECTURE_LEVEL_UNITS)) == 41
    assert set(PREFECTURE_LEVEL_UNITS) == {SHANGHAI} | set(EXPECTED_PREFECTURES)
    for code in PREFECTURE_LEVEL_UNITS:
        assert is_delta_bureau(code)


def test_counts_per_province() -> None:
    def prefectures(province: str) -> list[Bureau]:
        return [b for b in bureaus_under(province) if b.level == "prefecture"]

    assert len(prefectures(JIANGSU)) == 13
    assert len(prefectures(ZHEJIANG)) == 11
    assert len(prefectures(ANHUI)) == 16
    assert prefectures(SHANGHAI) == []
    assert [b.code for b in bureaus_under(SHANGHAI)] == sorted(SHANGHAI_DISTRICTS)
    assert len(BUREAUS) == 4 + 40 + 16


def test_code_ranges_from_references() -> None:
    """Jiangsu 3201-3213, Zhejiang 3301-3311, Anhui 3401-3408, 3410-3413, 3415-3418."""
    expected = (
        {f"32{n:02d}00" for n in range(1, 14)}
        | {f"33{n:02d}00" for n in range(1, 12)}
        | {f"34{n:02d}00" for n in [*range(1, 9), *range(10, 14), *range(15, 19)]}
    )
    assert {b.code for b in BUREAUS.values() if b.level == "prefecture"} == expected


def test_bureaus_under_is_sorted_and_excludes_node() -> None:
    for province in PROVINCES:
        under = bureaus_under(province)
        codes = [b.code for b in under]
        assert codes == sorted(codes)
        assert province not in codes
        assert all(b.province == province for b in under)


def test_english_names_and_disambiguation() -> None:
    assert bureau("320500").name_en == "Suzhou"
    assert bureau("341300").name_en == "Suzhou"
    assert bureau("320500").label_en == "Suzhou, Jiangsu"
    assert bureau("341300").label_en == "Suzhou, Anhui"
    assert bureau("321200").label_en == "Taizhou, Jiangsu"
    assert bureau("331000").label_en == "Taizhou, Zhejiang"
    assert bureau("330100").name_en == "Hangzhou"
    assert bureau("340100").name_en == "Hefei"
    assert bureau("341500").name_en == "Lu'an"
    assert bureau("341800").name_en == "Xuancheng"
    assert bureau("310115").label_en == "Pudong New Area, Shanghai"
    assert bureau(ANHUI).label_en == "Anhui"
    assert str(bureau("320500")) == "320500 苏州市 (Suzhou, Jiangsu)"
    labels = [b.label_en for b in BUREAUS.values()]
    assert len(labels) == len(set(labels))


def test_bureau_is_frozen() -> None:
    found = bureau("320500")
    with pytest.raises(AttributeError):
        found.code = "320600"  # type: ignore[misc]


def test_surrounding_whitespace_accepted() -> None:
    assert province_of(" 320500\n") == JIANGSU
    assert normalize_division_code("\t330100 ") == "330100"


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("110000", "Beijing"),
        ("110105", "Beijing"),
        ("440300", "Guangdong"),
        ("500000", "Chongqing"),
        ("370200", "Shandong"),
        ("350000", "Fujian"),
        ("360000", "Jiangxi"),
        ("810000", "Hong Kong"),
    ],
)
def test_non_delta_codes_refused_by_name(code: str, name: str) -> None:
    error = _refusal(code)
    assert error.reason == "NOT_IN_DELTA"
    assert f"{code} is not a bureau of the Yangtze River Delta federation ({name}" in str(error)
    assert not is_delta_bureau(code)


def test_other_provinces_complete() -> None:
    """34 province-level divisions in all: 4 in the Delta, 30 outside."""
    assert len(OTHER_PROVINCES) == 30
    assert not set(OTHER_PROVINCES) & set(PROVINCES)
    assert all(code.endswith("0000") for code in OTHER_PROVINCES)


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        ("320581", "through their prefecture, 320500 苏州市 (Suzhou, Jiangsu)"),
        ("341400", "Anhui 安徽省 (340000)"),  # Chaohu, abolished 2011
        ("340900", "Anhui"),
        ("310100", "Shanghai"),  # the "市辖区" grouping code, not a bureau
        ("310230", "Shanghai"),  # old Chongming County code
        ("321400", "Jiangsu"),
    ],
)
def test_unknown_delta_codes_refused(code: str, fragment: str) -> None:
    error = _refusal(code)
    assert error.reason == "UNKNOWN_BUREAU"
    assert fragment in str(error)
    assert not is_delta_bureau(code)


@pytest.mark.parametrize("code", ["000000", "990000", "300000"])
def test_unknown_province_prefix_refused(code: str) -> None:
    error = _refusal(code)
    assert error.reason == "UNKNOWN_BUREAU"
    assert "not a GB/T 2260 division code of any province" in str(error)


@pytest.mark.parametrize(
    "code", ["", "3205", "3205000", "32050A", "32 500", "３２０５００", "+32050"]
)
def test_malformed_codes_refused(code: str) -> None:
    assert _refusal(code).reason == "DIVISION_FORMAT"
    assert not is_delta_bureau(code)


@pytest.mark.parametrize("value", [None, 320500, b"320500"])
def test_is_delta_bureau_non_strings(value: object) -> None:
    assert not is_delta_bureau(value)


def test_bureaus_under_refuses_non_provinces() -> None:
    with pytest.raises(ValidationError) as excinfo:
        bureaus_under("320500")
    assert excinfo.value.reason == "NOT_A_PROVINCE"
    assert "320000 (Jiangsu)" in str(excinfo.value)
    with pytest.raises(ValidationError) as excinfo:
        bureaus_under("110000")
    assert excinfo.value.reason == "NOT_IN_DELTA"
