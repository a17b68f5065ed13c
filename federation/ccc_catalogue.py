"""The product categories (产品大类) of the CCC catalogue, as a fixed list with stable codes.

Why this module exists: an expert's expertise and an exchange request's subject are both stated
as catalogue categories, and two provinces can only match one against the other if they use the
same words. Free text ("低压电器" in one registry, "低压元器件" in another) would make matching a
matter of spelling, so every category has one stable ASCII code used in files and messages, and
the Chinese and English names are for people.

Source: 《强制性产品认证目录描述与界定表（2020年修订）》, published with SAMR (市场监管总局)
announcement 2020 No. 18 — 17 categories, 103 products. The categories below are its 17, in its
order (:attr:`ProductCategory.number` is the Chinese ordinal 一 … 十七 of that edition).
The 2023 revision (announced 2023-08-10; 16 categories, 96 products) replaced that table; the
list here deliberately keeps the 2020 set. Codes are never removed or reused, because expertise
recorded in a registry and certificates issued since 2019-04-01 (the checklist's horizon) must
stay readable when the catalogue changes; a category withdrawn from a later edition stays
valid as expertise. A new category gets a new code at the end.

The codes are this project's own mnemonics, not the catalogue's four-digit product codes
(``0101`` …): those number the 96-103 *products*, not the categories, and their first two digits
come from an older category numbering that does not always match the 17 categories.

Pure: no I/O, no mutable global state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from federation.errors import ValidationError

__all__ = [
    "CATALOGUE_EDITION",
    "CATEGORIES",
    "ProductCategory",
    "category",
    "normalise_categories",
]

CATALOGUE_EDITION: Final = (
    "强制性产品认证目录描述与界定表（2020年修订）, SAMR announcement 2020 No. 18 (17 categories)"
)
"""The edition the category list follows; shown in registry documentation and errors."""


@dataclass(frozen=True, slots=True)
class ProductCategory:
    """One product category (产品大类) of the CCC catalogue."""

    code: str
    """Stable ASCII code used in files and messages, e.g. ``"LOW_VOLTAGE_APPARATUS"``."""
    number: int
    """Position in the 2020 catalogue (1-17, the Chinese ordinal 一 … 十七)."""
    name_zh: str
    """The catalogue's Chinese name, e.g. ``"低压电器"``."""
    name_en: str
    """An English name for people, e.g. ``"Low-voltage electrical apparatus"``."""

    def __str__(self) -> str:
        return f"{self.name_zh} ({self.name_en})"


# (code, Chinese name, English name), in catalogue order.
_ROWS: Final[tuple[tuple[str, str, str], ...]] = (
    ("WIRES_CABLES", "电线电缆", "Electric wires and cables"),
    (
        "CIRCUIT_SWITCHES",
        "电路开关及保护或连接用电器装置",
        "Circuit switches and electrical devices for protection or connection",
    ),
    ("LOW_VOLTAGE_APPARATUS", "低压电器", "Low-voltage electrical apparatus"),
    ("SMALL_MOTORS", "小功率电动机", "Small-power motors"),
    ("ELECTRIC_TOOLS", "电动工具", "Electric tools"),
    ("WELDING_MACHINES", "电焊机", "Electric welding machines"),
    ("HOUSEHOLD_APPLIANCES", "家用和类似用途设备", "Household and similar electrical appliances"),
    ("ELECTRONICS", "电子产品及安全附件", "Electronic products and safety accessories"),
    ("LIGHTING", "照明电器", "Lighting apparatus"),
    ("VEHICLES", "车辆及安全附件", "Motor vehicles and safety accessories"),
    ("AGRICULTURAL_MACHINERY", "农机产品", "Agricultural machinery"),
    ("FIRE_PROTECTION", "消防产品", "Fire protection products"),
    ("SECURITY_PROTECTION", "安全防范产品", "Security and protection products"),
    ("BUILDING_MATERIALS", "建材产品", "Building and decoration materials"),
    ("CHILDREN_PRODUCTS", "儿童用品", "Children's products"),
    ("EXPLOSION_PROOF", "防爆电气", "Explosion-proof electrical products"),
    ("DOMESTIC_GAS_APPLIANCES", "家用燃气器具", "Domestic gas appliances"),
)

#: Every category by code, in catalogue order.
CATEGORIES: Final[Mapping[str, ProductCategory]] = MappingProxyType(
    {
        code: ProductCategory(code, number, zh, en)
        for number, (code, zh, en) in enumerate(_ROWS, start=1)
    }
)

# Lookup by any accepted spelling: the code (any case), the Chinese name, the English name
# (any case). Registries are written by people in spreadsheets; the code is canonical.
_BY_TEXT: Final[Mapping[str, str]] = MappingProxyType(
    {
        **{c.code.casefold(): c.code for c in CATEGORIES.values()},
        **{c.name_zh: c.code for c in CATEGORIES.values()},
        **{c.name_en.casefold(): c.code for c in CATEGORIES.values()},
    }
)


def category(text: str) -> ProductCategory:
    """Return the category named by ``text``: its code, Chinese name or English name.

    Surrounding whitespace is ignored and codes and English names are matched without regard
    to case. Raises :class:`~federation.errors.ValidationError` (reason ``UNKNOWN_CATEGORY``)
    naming the accepted codes otherwise.
    """
    key = text.strip()
    code = _BY_TEXT.get(key) or _BY_TEXT.get(key.casefold())
    if code is None:
        raise ValidationError(
            f"{text!r} is not a CCC catalogue product category; use one of "
            f"{', '.join(CATEGORIES)} (or the Chinese name, e.g. 低压电器)",
            reason="UNKNOWN_CATEGORY",
        )
    return CATEGORIES[code]


def normalise_categories(texts: Iterable[str]) -> frozenset[str]:
    """Return the codes of the categories named in ``texts`` (see :func:`category`).

    Duplicates collapse; an empty result is the caller's to refuse (what "no category" means
    depends on whether it is an expertise or a request).
    """
    return frozenset(category(text).code for text in texts)
