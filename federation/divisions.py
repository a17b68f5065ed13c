"""GB/T 2260 division codes of the Yangtze River Delta federation's bureaus.

The federation has four provincial nodes (Shanghai ``310000``, Jiangsu ``320000``, Zhejiang
``330000``, Anhui ``340000``). Below them sit the market regulation bureaus of

* the 40 prefecture-level cities of Jiangsu (13), Zhejiang (11) and Anhui (16), and
* the 16 districts of Shanghai.

Counting the municipality of Shanghai as one prefecture-level unit gives the Delta's 41
prefecture-level units (:data:`PREFECTURE_LEVEL_UNITS`). A message for a city or district bureau
is routed to its province's node (:func:`province_of`), which assigns it internally.

County-level bureaus (e.g. ``320581`` Changshu) are not federation addresses: they are reached
through their prefecture. Province-level codes outside the Delta are recognised by name only so
that refusals can say which province a code belongs to.

Names follow GB/T 2260 (current edition, with the 2016 change of ``310230`` Chongming County to
``310151`` Chongming District and the 2011 abolition of ``341400`` Chaohu). Note that two English
names occur twice: Suzhou (苏州 ``320500``, 宿州 ``341300``) and Taizhou (泰州 ``321200``,
台州 ``331000``); :attr:`Bureau.label_en` disambiguates them.

This module is pure: no I/O, no mutable global state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from federation.errors import ValidationError

__all__ = [
    "ANHUI",
    "BUREAUS",
    "JIANGSU",
    "OTHER_PROVINCES",
    "PREFECTURE_LEVEL_UNITS",
    "PROVINCES",
    "SHANGHAI",
    "ZHEJIANG",
    "Bureau",
    "Level",
    "bureau",
    "bureaus_under",
    "is_delta_bureau",
    "normalize_division_code",
    "province_of",
]

SHANGHAI = "310000"
JIANGSU = "320000"
ZHEJIANG = "330000"
ANHUI = "340000"

Level = Literal["province", "prefecture", "district"]
"""Administrative level of a bureau: provincial node, prefecture-level city, Shanghai district."""

_BUREAU_SUFFIX = "市场监督管理局"


@dataclass(frozen=True, slots=True)
class Bureau:
    """A market regulation bureau (市场监督管理局) that the federation can address."""

    code: str
    """Six-digit GB/T 2260 division code, e.g. ``"320500"``."""
    place_zh: str
    """Chinese name of the division, e.g. ``"苏州市"``, ``"浦东新区"``."""
    bureau_zh: str
    """Chinese name of the bureau, e.g. ``"苏州市市场监督管理局"``."""
    name_en: str
    """English name of the division, e.g. ``"Suzhou"`` (not unique: see :attr:`label_en`)."""
    province: str
    """Division code of the provincial node the bureau belongs to (itself for a province)."""
    level: Level
    """``"province"``, ``"prefecture"`` or ``"district"``."""

    @property
    def is_province(self) -> bool:
        """Whether this bureau is one of the four provincial nodes."""
        return self.level == "province"

    @property
    def label_en(self) -> str:
        """Unambiguous English label, e.g. ``"Suzhou, Jiangsu"`` or ``"Anhui"``."""
        if self.is_province:
            return self.name_en
        return f"{self.name_en}, {_PROVINCE_EN[self.province]}"

    def __str__(self) -> str:
        return f"{self.code} {self.place_zh} ({self.label_en})"


_PROVINCE_ROWS: tuple[tuple[str, str, str], ...] = (
    (SHANGHAI, "上海市", "Shanghai"),
    (JIANGSU, "江苏省", "Jiangsu"),
    (ZHEJIANG, "浙江省", "Zhejiang"),
    (ANHUI, "安徽省", "Anhui"),
)
_PROVINCE_EN: dict[str, str] = {code: en for code, _zh, en in _PROVINCE_ROWS}

# (code, Chinese name, English name) of each prefecture-level city, by province.
_PREFECTURE_ROWS: tuple[tuple[str, str, str], ...] = (
    # Jiangsu: 3201-3213
    ("320100", "南京市", "Nanjing"),
    ("320200", "无锡市", "Wuxi"),
    ("320300", "徐州市", "Xuzhou"),
    ("320400", "常州市", "Changzhou"),
    ("320500", "苏州市", "Suzhou"),
    ("320600", "南通市", "Nantong"),
    ("320700", "连云港市", "Lianyungang"),
    ("320800", "淮安市", "Huai'an"),
    ("320900", "盐城市", "Yancheng"),
    ("321000", "扬州市", "Yangzhou"),
    ("321100", "镇江市", "Zhenjiang"),
    ("321200", "泰州市", "Taizhou"),
    ("321300", "宿迁市", "Suqian"),
    # Zhejiang: 3301-3311
    ("330100", "杭州市", "Hangzhou"),
    ("330200", "宁波市", "Ningbo"),
    ("330300", "温州市", "Wenzhou"),
    ("330400", "嘉兴市", "Jiaxing"),
    ("330500", "湖州市", "Huzhou"),
    ("330600", "绍兴市", "Shaoxing"),
    ("330700", "金华市", "Jinhua"),
    ("330800", "衢州市", "Quzhou"),
    ("330900", "舟山市", "Zhoushan"),
    ("331000", "台州市", "Taizhou"),
    ("331100", "丽水市", "Lishui"),
    # Anhui: 3401-3408, 3410-3413, 3415-3418 (3409 unused; 3414 Chaohu abolished in 2011)
    ("340100", "合肥市", "Hefei"),
    ("340200", "芜湖市", "Wuhu"),
    ("340300", "蚌埠市", "Bengbu"),
    ("340400", "淮南市", "Huainan"),
    ("340500", "马鞍山市", "Ma'anshan"),
    ("340600", "淮北市", "Huaibei"),
    ("340700", "铜陵市", "Tongling"),
    ("340800", "安庆市", "Anqing"),
    ("341000", "黄山市", "Huangshan"),
    ("341100", "滁州市", "Chuzhou"),
    ("341200", "阜阳市", "Fuyang"),
    ("341300", "宿州市", "Suzhou"),
    ("341500", "六安市", "Lu'an"),
    ("341600", "亳州市", "Bozhou"),
    ("341700", "池州市", "Chizhou"),
    ("341800", "宣城市", "Xuancheng"),
)

# The 16 districts of Shanghai (3101xx).
_DISTRICT_ROWS: tuple[tuple[str, str, str], ...] = (
    ("310101", "黄浦区", "Huangpu"),
    ("310104", "徐汇区", "Xuhui"),
    ("310105", "长宁区", "Changning"),
    ("310106", "静安区", "Jing'an"),
    ("310107", "普陀区", "Putuo"),
    ("310109", "虹口区", "Hongkou"),
    ("310110", "杨浦区", "Yangpu"),
    ("310112", "闵行区", "Minhang"),
    ("310113", "宝山区", "Baoshan"),
    ("310114", "嘉定区", "Jiading"),
    ("310115", "浦东新区", "Pudong New Area"),
    ("310116", "金山区", "Jinshan"),
    ("310117", "松江区", "Songjiang"),
    ("310118", "青浦区", "Qingpu"),
    ("310120", "奉贤区", "Fengxian"),
    ("310151", "崇明区", "Chongming"),
)

#: Province-level divisions outside the Delta: code -> (Chinese name, English name).
OTHER_PROVINCES: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "110000": ("北京市", "Beijing"),
        "120000": ("天津市", "Tianjin"),
        "130000": ("河北省", "Hebei"),
        "140000": ("山西省", "Shanxi"),
        "150000": ("内蒙古自治区", "Inner Mongolia"),
        "210000": ("辽宁省", "Liaoning"),
        "220000": ("吉林省", "Jilin"),
        "230000": ("黑龙江省", "Heilongjiang"),
        "350000": ("福建省", "Fujian"),
        "360000": ("江西省", "Jiangxi"),
        "370000": ("山东省", "Shandong"),
        "410000": ("河南省", "Henan"),
        "420000": ("湖北省", "Hubei"),
        "430000": ("湖南省", "Hunan"),
        "440000": ("广东省", "Guangdong"),
        "450000": ("广西壮族自治区", "Guangxi"),
        "460000": ("海南省", "Hainan"),
        "500000": ("重庆市", "Chongqing"),
        "510000": ("四川省", "Sichuan"),
        "520000": ("贵州省", "Guizhou"),
        "530000": ("云南省", "Yunnan"),
        "540000": ("西藏自治区", "Xizang (Tibet)"),
        "610000": ("陕西省", "Shaanxi"),
        "620000": ("甘肃省", "Gansu"),
        "630000": ("青海省", "Qinghai"),
        "640000": ("宁夏回族自治区", "Ningxia"),
        "650000": ("新疆维吾尔自治区", "Xinjiang"),
        "710000": ("台湾省", "Taiwan"),
        "810000": ("香港特别行政区", "Hong Kong"),
        "820000": ("澳门特别行政区", "Macao"),
    }
)


def _build() -> dict[str, Bureau]:
    """Assemble the bureau table from the rows above."""
    table: dict[str, Bureau] = {}
    for code, zh, en in _PROVINCE_ROWS:
        table[code] = Bureau(code, zh, zh + _BUREAU_SUFFIX, en, code, "province")
    for code, zh, en in _PREFECTURE_ROWS:
        province = code[:2] + "0000"
        table[code] = Bureau(code, zh, zh + _BUREAU_SUFFIX, en, province, "prefecture")
    for code, zh, en in _DISTRICT_ROWS:
        table[code] = Bureau(code, zh, "上海市" + zh + _BUREAU_SUFFIX, en, SHANGHAI, "district")
    return table


#: Every bureau the federation can address, by division code (60 entries).
BUREAUS: Mapping[str, Bureau] = MappingProxyType(_build())

#: The four provincial nodes, by division code.
PROVINCES: Mapping[str, Bureau] = MappingProxyType(
    {code: BUREAUS[code] for code, _zh, _en in _PROVINCE_ROWS}
)

#: The Delta's 41 prefecture-level units: Shanghai (as one unit) and the 40 prefecture-level
#: cities of Jiangsu, Zhejiang and Anhui.
PREFECTURE_LEVEL_UNITS: tuple[str, ...] = (SHANGHAI, *(code for code, _zh, _en in _PREFECTURE_ROWS))


def normalize_division_code(code: str) -> str:
    """Return ``code`` without surrounding whitespace if it is six ASCII digits.

    Raises :class:`~federation.errors.ValidationError` (reason ``DIVISION_FORMAT``) otherwise.
    """
    stripped = code.strip()
    if len(stripped) != 6 or not (stripped.isascii() and stripped.isdigit()):
        raise ValidationError(
            f"{code!r} is not a GB/T 2260 division code: expected six digits such as 320500",
            reason="DIVISION_FORMAT",
        )
    return stripped


def bureau(code: str) -> Bureau:
    """Return the Delta bureau with division code ``code``.

    Raises :class:`~federation.errors.ValidationError` with reason

    * ``DIVISION_FORMAT`` if ``code`` is not six digits,
    * ``NOT_IN_DELTA`` if it belongs to a province outside the Delta (the message names it),
    * ``UNKNOWN_BUREAU`` if it is in the Delta but not a federation address (e.g. a county,
      which is reached through its prefecture), or not a known province code at all.
    """
    normalised = normalize_division_code(code)
    found = BUREAUS.get(normalised)
    if found is not None:
        return found
    province_code = normalised[:2] + "0000"
    other = OTHER_PROVINCES.get(province_code)
    if other is not None:
        zh, en = other
        raise ValidationError(
            f"{normalised} is not a bureau of the Yangtze River Delta federation "
            f"({en} {zh}); only Shanghai, Jiangsu, Zhejiang and Anhui take part",
            reason="NOT_IN_DELTA",
        )
    province = PROVINCES.get(province_code)
    if province is None:
        raise ValidationError(
            f"{normalised} is not a GB/T 2260 division code of any province "
            f"(no province-level division {province_code})",
            reason="UNKNOWN_BUREAU",
        )
    prefecture = BUREAUS.get(normalised[:4] + "00")
    if prefecture is not None and prefecture.level == "prefecture":
        hint = f"; county-level bureaus are addressed through their prefecture, {prefecture}"
    else:
        hint = f"; see bureaus_under({province.code!r}) for the valid codes"
    raise ValidationError(
        f"{normalised} is not a bureau known to the federation in {province.name_en} "
        f"{province.place_zh} ({province.code}){hint}",
        reason="UNKNOWN_BUREAU",
    )


def province_of(code: str) -> str:
    """Return the division code of the provincial node that a bureau code routes to.

    ``province_of("320500") == "320000"``; a provincial code routes to itself. Refuses
    unknown and non-Delta codes as :func:`bureau` does.
    """
    return bureau(code).province


def is_delta_bureau(code: object) -> bool:
    """Return whether ``code`` is a string that :func:`bureau` accepts."""
    if not isinstance(code, str):
        return False
    try:
        bureau(code)
    except ValidationError:
        return False
    return True


def bureaus_under(province: str) -> list[Bureau]:
    """Return the prefecture and district bureaus under a provincial node, ordered by code.

    The provincial bureau itself is not included. Raises
    :class:`~federation.errors.ValidationError` with reason ``NOT_A_PROVINCE`` for a Delta
    bureau that is not a provincial node, and as :func:`bureau` for anything else.
    """
    node = bureau(province)
    if not node.is_province:
        raise ValidationError(
            f"{node} is not a provincial node; its province is {node.province} "
            f"({PROVINCES[node.province].name_en})",
            reason="NOT_A_PROVINCE",
        )
    return sorted(
        (b for b in BUREAUS.values() if b.province == node.code and not b.is_province),
        key=lambda b: b.code,
    )
