"""The label taxonomy: every tweet gets one primary department and one urgency."""

from __future__ import annotations

from enum import StrEnum


class Department(StrEnum):
    """Who must act on a tweet. Definitions: docs/architecture.md, "Departments and urgencies"."""

    CUSTOMER_SERVICE = "customer_service"
    SALES = "sales"
    MARKETING = "marketing"
    COMMUNICATIONS = "communications"
    INVESTOR_RELATIONS = "investor_relations"
    LEGAL = "legal"
    IT_SECURITY = "it_security"
    COMMUNITY = "community"


class Urgency(StrEnum):
    """How fast someone must act, from ``critical`` (now) to ``low`` (nothing to answer)."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


DEPARTMENTS: tuple[Department, ...] = tuple(Department)
URGENCIES: tuple[Urgency, ...] = tuple(Urgency)
