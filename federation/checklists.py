"""The two on-site checklists of the guideline, transcribed from its annexes as data.

Why this is data and not prose: an inspection result record (:mod:`federation.inspection`) must
answer *every* sub-item of exactly one annex, and a peer that recognises the record (guideline
item 19) must be able to tell which question each finding answers. Both sides therefore need the
same table of items and sub-items, with the guideline's own words, in one place.

=====================  ==========================================  =======  ==========
kind                   form (guideline annex)                      items    sub-items
=====================  ==========================================  =======  ==========
``GENERAL``            附件1 一般CCC免办单位后续监管现场检查表       3        6
``FAST_TRACK``         附件2 便捷通道使用单位后续监管现场检查表       4        10
=====================  ==========================================  =======  ==========

Transcription rules:

* A sub-item's id is ``"<item>.<sub-item>"`` as the form numbers them: item ``1``-``4`` (序号)
  and the circled numeral of the check content (检查内容 ①, ②...). The same id means different
  things in the two annexes (Annex 1 ``2.1`` is a catalogue question, Annex 2 ``2.1`` a question
  on the application materials), so an id is only meaningful together with the kind.
* Chinese text is copied character for character from the issued guideline, including its
  inconsistencies (Annex 2 item 3 reads "有否存在", Annex 1 item 2 "是否存在"; the two
  "申报材料是否有不实情况" sub-items have different check points). :attr:`SubItem.label_zh`
  (numeral + check content), :attr:`SubItem.points_zh` (检查要点) and :attr:`Item.text_zh`
  (检查项目) each occur verbatim in the annex; a test checks this against a verbatim copy.
* The English glosses are ours, for readers and logs; they carry no authority.

The form's basic-data vocabulary shared by both annexes (business categories, the five clauses,
the "other findings" prompt, the 2019-04-01 start of the certificate counts) is here too.

This module is pure data: no I/O, no mutable global state.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final, TypeAlias

from federation.requests import UseType

__all__ = [
    "BUSINESS_CATEGORY_ZH",
    "CHECKLISTS",
    "CLAUSE_ZH",
    "FAST_TRACK_CHECKLIST",
    "GENERAL_CHECKLIST",
    "OTHER_FINDINGS_PROMPT_ZH",
    "RECORDS_SINCE",
    "BusinessCategory",
    "Checklist",
    "ChecklistKind",
    "ExemptionClause",
    "Item",
    "SubItem",
    "checklist",
    "kind_of_sub_item",
]

ExemptionClause: TypeAlias = UseType
"""The five exemption clauses (免办条款); the request vocabulary's :class:`UseType` is the same
thing seen from the place of use, so there is one enum for both."""

RECORDS_SINCE: Final = dt.date(2019, 4, 1)
"""The form counts certificates and write-offs "（2019年4月1日以来）"."""

OTHER_FINDINGS_PROMPT_ZH: Final = (
    "重点记录CCC免办产品的实际使用地涉外省（市）的情况，如涉及批次、具体省市、使用类型"
    "（直接维修、商业展示、科研测试）、核销情况等。"
)
"""The instruction printed in the "其他检查发现的情况" row of both forms."""

_CIRCLED: Final = "①②③④⑤⑥⑦⑧⑨"


class ChecklistKind(StrEnum):
    """Which form an inspection follows: the holder's category decides it (items 10 and 11)."""

    GENERAL = "general"
    """Annex 1, for general holders (一般CCC免办单位), sampled by ratio."""
    FAST_TRACK = "fast_track"
    """Annex 2, for fast-track holders (便捷通道使用单位), all inspected."""


class BusinessCategory(StrEnum):
    """The tick boxes of "单位经营类别" on both forms, in form order."""

    PRODUCTION_PROCESSING = "production_processing"
    RESEARCH_TESTING = "research_testing"
    REPAIR = "repair"
    REPAIR_AGENCY = "repair_agency"
    COMMERCIAL_DISPLAY = "commercial_display"
    OTHER = "other"


BUSINESS_CATEGORY_ZH: Mapping[BusinessCategory, str] = MappingProxyType(
    {
        BusinessCategory.PRODUCTION_PROCESSING: "生产加工",
        BusinessCategory.RESEARCH_TESTING: "科研测试",
        BusinessCategory.REPAIR: "维修",
        BusinessCategory.REPAIR_AGENCY: "维修代理",
        BusinessCategory.COMMERCIAL_DISPLAY: "商业展示",
        BusinessCategory.OTHER: "其他",
    }
)
"""Chinese labels of the business categories, in form order."""

CLAUSE_ZH: Mapping[ExemptionClause, str] = MappingProxyType(
    {
        UseType.RESEARCH_TESTING: "为科研、测试和认证检测所需的产品和样品",
        UseType.REPAIR: "直接为最终用户维修目的所需的零部件/产品",
        UseType.PRODUCTION_LINE: "工厂生产线/成套生产线配套所需的设备/零部件（不含办公用品）",
        UseType.COMMERCIAL_DISPLAY: "仅用于商业展示但不销售的产品",
        UseType.WHOLE_MACHINE_EXPORT: "以整机全数出口为目的进口的零部件",
    }
)
"""The five boxes of "涉及申请免办条款", in form order (without the trailing ；/。)."""


@dataclass(frozen=True, slots=True)
class SubItem:
    """One row of the form: a check content (检查内容) with its check points (检查要点)."""

    item: int
    """Number of the item (序号) it belongs to, from 1."""
    number: int
    """Its circled numeral within the item, from 1 (① = 1)."""
    text_zh: str
    """The check content as printed, without the circled numeral."""
    points_zh: str
    """The check points (检查要点): what the inspector looks at."""
    gloss_en: str
    """Our English gloss of the check content."""

    @property
    def id(self) -> str:
        """``"<item>.<number>"``, e.g. ``"2.1"``: how a record names the sub-item."""
        return f"{self.item}.{self.number}"

    @property
    def label_zh(self) -> str:
        """The check content exactly as printed, e.g. ``"①申请材料是否应报未报"``."""
        return _CIRCLED[self.number - 1] + self.text_zh


@dataclass(frozen=True, slots=True)
class Item:
    """One check item (检查项目) and its sub-items, in form order."""

    number: int
    text_zh: str
    gloss_en: str
    sub_items: tuple[SubItem, ...]


@dataclass(frozen=True, slots=True)
class Checklist:
    """One annex's checklist."""

    kind: ChecklistKind
    annex: int
    """The annex number in the guideline (1 or 2)."""
    title_zh: str
    title_en: str
    holder_zh: str
    """How the form names the holder ("CCC免办单位" or "CCC免办便捷通道使用单位")."""
    account_label_zh: str
    """The label of the holder's system account on the form."""
    items: tuple[Item, ...]

    @property
    def sub_items(self) -> tuple[SubItem, ...]:
        """Every sub-item in form order."""
        return tuple(sub for item in self.items for sub in item.sub_items)

    @property
    def sub_item_ids(self) -> tuple[str, ...]:
        """Ids of every sub-item in form order, e.g. ``("1.1", "1.2", "2.1", ...)``."""
        return tuple(sub.id for sub in self.sub_items)

    def sub_item(self, sub_item_id: str) -> SubItem:
        """The sub-item with this id; ``KeyError`` if this annex has none."""
        for sub in self.sub_items:
            if sub.id == sub_item_id:
                return sub
        raise KeyError(sub_item_id)

    def describe(self, sub_item_id: str) -> str:
        """``"Annex 1 item 2 sub-item 1: ①产品大类… (gloss)"`` for messages to people."""
        sub = self.sub_item(sub_item_id)
        return (
            f"Annex {self.annex} item {sub.item} sub-item {sub.number}: "
            f"{sub.label_zh} ({sub.gloss_en})"
        )


def _item(number: int, text_zh: str, gloss_en: str, *subs: tuple[str, str, str]) -> Item:
    return Item(
        number,
        text_zh,
        gloss_en,
        tuple(
            SubItem(number, index + 1, text, points, gloss)
            for index, (text, points, gloss) in enumerate(subs)
        ),
    )


# Rows shared word for word by both annexes (compared against the verbatim copy in the tests).
_NOT_REPORTED: Final = (
    "申请材料是否应报未报",
    "随机抽查部分免办批次，查看不同类型免办业务提交的材料的书面资料记录和相关电子文件，"
    "是否符合市场监管总局《CCC免办审核及后续监管要求》。",
    "materials that should have been submitted with the application were not",
)
_MODEL_OUTSIDE: Final = (
    "产品大类符合CCC目录范围，但具体型号、规格、生产标准不符",
    "随机抽查部分免办批次内产品，对照国家认监委相关公告、《强制性产品认证目录产品与2017年HS"
    "编码对应表》、《强制性产品认证目录鉴定指南》查看，是否不属于CCC目录内产品。",
    "the product category is in the CCC catalogue but the model, specification or "
    "production standard is not",
)
_CATEGORY_OUTSIDE: Final = (
    "产品不在CCC目录大类内",
    "随机抽查部分免办批次内产品，对照《强制性产品认证目录描述与界定表》、《强制性产品认证目录"
    "鉴定指南》查看，产品是否不在CCC目录范围内。",
    "the product is outside the CCC catalogue categories",
)
_NOT_WRITTEN_OFF: Final = (
    "未在CCC免办系统完成核销的产品",
    "随机抽查部分未使用批次，查看产品是否按承诺时限应核销未核销；查看产品使用、维修、保存等记录，"
    "重点关注CCC免办产品是否改变用途、是否维修用品未按承诺要求用于销售、是否展品或测试样品"
    "未及时退运、是否零配件产品使用损耗率偏离实际等。",
    "products not yet written off in the exemption system (overdue write-offs, changed use)",
)
_FALSE_STATEMENTS_GLOSS: Final = "false statements in the application materials"
_HANDLED_GLOSS: Final = (
    "products not used or disposed of as the follow-up supervision requirements and the "
    "holder's undertakings require"
)

GENERAL_CHECKLIST: Final = Checklist(
    kind=ChecklistKind.GENERAL,
    annex=1,
    title_zh="一般CCC免办单位后续监管现场检查表",
    title_en="On-site follow-up supervision checklist for general holders",
    holder_zh="CCC免办单位",
    account_label_zh="CCC免办系统账号",
    items=(
        _item(
            1,
            "是否存在申报材料应报未报或者申报不实的情况",
            "materials not submitted or falsely declared",
            _NOT_REPORTED,
            (
                "申报材料是否有不实情况",
                "随机抽查部分免办批次，查看后续管理承诺书的承诺核销时间、使用对象记录等是否和"
                "承诺书对应；测试计划书、进口合同、发票或提单中的产品明细和入库是否对应；成品出口"
                "数量是否和进口配件搭配和记录在合理区间等。",
                _FALSE_STATEMENTS_GLOSS,
            ),
        ),
        _item(
            2,
            "是否存在不属于CCC目录内的产品通过CCC免办系统申报获证的情况",
            "products outside the CCC catalogue certified through the exemption system",
            _MODEL_OUTSIDE,
            _CATEGORY_OUTSIDE,
        ),
        _item(
            3,
            "是否未按后续监管要求、后续管理承诺使用或处理相关CCC免办产品",
            _HANDLED_GLOSS,
            _NOT_WRITTEN_OFF,
            (
                "是否建立CCC免办进口产品管理台帐，已在CCC免办系统完成使用、退运出关或销毁核销的"
                "产品",
                "是否建立CCC免办进口产品管理台帐，保存使用、退运或销毁记录等。抽取部分产品查看使用、"
                "退运出关或销毁核销的相关凭证和资料。",
                "a ledger of exempted imports is kept; products written off in the system as "
                "used, shipped back out or destroyed",
            ),
        ),
    ),
)
"""Annex 1: 3 items, 6 sub-items."""

FAST_TRACK_CHECKLIST: Final = Checklist(
    kind=ChecklistKind.FAST_TRACK,
    annex=2,
    title_zh="便捷通道使用单位后续监管现场检查表",
    title_en="On-site follow-up supervision checklist for fast-track holders",
    holder_zh="CCC免办便捷通道使用单位",
    account_label_zh="CCC免办便捷通道账号",
    items=(
        _item(
            1,
            "是否持续满足CCC免办便捷通道申请条件",
            "the holder still meets the conditions for the fast track",
            (
                "2年内信用记录是否良好",
                "查国家企业信用信息公示系统中2年内有否不良记录，单位提供的其他信用证明材料等。",
                "good credit record over the last 2 years",
            ),
            (
                "产品追溯体系是否完善",
                "查单位有否建立并正常运行CCC免办产品追溯管理制度，有否CCC免办产品入库、领用、"
                "使用、归还、退运或报废等管理要求。随机抽查部分免办批次，看相关记录是否可追溯。",
                "complete product traceability system",
            ),
            (
                "CCC免办业务频次是否符合要求",
                "查单位便捷通道申报后使用次数，听取单位免办业务计划，核查CCC免办进口产品业务是否"
                "符合规定。",
                "frequency of exemption business meets the requirement",
            ),
            (
                "注册或者经营地是否在当地",
                "查看单位营业执照等登记注册信息、经营地产权证明或租赁合同。",
                "registered or business address is in the bureau's jurisdiction",
            ),
        ),
        _item(
            2,
            "是否存在申报材料应报未报或者申报不实的情况",
            "materials not submitted or falsely declared",
            _NOT_REPORTED,
            (
                "申报材料是否有不实情况",
                "随机抽查部分免办批次，查看后续管理承诺书的承诺核销时间、使用对象记录等是否和"
                "承诺书对应；产品进口单据或入关凭证、测试计划书、进口合同、发票或提单中的产品明细"
                "和入库是否对应；成品出口数量是否和进口配件搭配和记录在合理区间等。",
                _FALSE_STATEMENTS_GLOSS,
            ),
        ),
        _item(
            3,
            "有否存在不属于CCC目录内的产品通过CCC免办系统申报获证的情况",
            "products outside the CCC catalogue certified through the exemption system",
            _MODEL_OUTSIDE,
            _CATEGORY_OUTSIDE,
        ),
        _item(
            4,
            "是否未按后续监管要求、后续管理承诺使用或处理相关CCC免办产品",
            _HANDLED_GLOSS,
            _NOT_WRITTEN_OFF,
            (
                "已在CCC免办系统完成使用、退运出关或销毁核销的产品",
                "查看使用、退运出关或销毁核销的相关凭证和资料。",
                "products written off in the system as used, shipped back out or destroyed",
            ),
        ),
    ),
)
"""Annex 2: 4 items, 10 sub-items."""

CHECKLISTS: Mapping[ChecklistKind, Checklist] = MappingProxyType(
    {ChecklistKind.GENERAL: GENERAL_CHECKLIST, ChecklistKind.FAST_TRACK: FAST_TRACK_CHECKLIST}
)
"""Both checklists by kind."""


def checklist(kind: ChecklistKind) -> Checklist:
    """The checklist of ``kind``."""
    return CHECKLISTS[kind]


def kind_of_sub_item(sub_item_id: str) -> tuple[ChecklistKind, ...]:
    """The kinds whose annex has a sub-item with this id (none, one or both), for messages."""
    return tuple(kind for kind, cl in CHECKLISTS.items() if sub_item_id in cl.sub_item_ids)
