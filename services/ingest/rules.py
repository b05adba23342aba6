"""Filtered-stream rules derived from the configured handles, and how to synchronize them.

Each handle gets rules matching tweets that mention it, reply to it or are sent by it (the
brand's replies, for response times), plus its extra keywords, hashtags and cashtags. Every
rule is tagged ``<prefix>@Handle`` (``#2``, ``#3``... when a handle's terms need more rules
than one rule's length allows), so a keyword match still says which handle it is for, and so
synchronization touches only the rules this configuration owns.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchboard.shared.config import HandleConfig, SwitchboardConfig


@dataclass(frozen=True, slots=True, order=True)
class StreamRule:
    value: str
    tag: str


@dataclass(frozen=True, slots=True)
class RuleChanges:
    add: list[StreamRule]
    delete_ids: list[str]


def desired_rules(config: SwitchboardConfig) -> list[StreamRule]:
    x = config.ingest.x
    suffix = "" if config.ingest.include_retweets else " -is:retweet"
    rules = []
    for handle in config.handles:
        terms = handle_terms(handle)
        tag = f"{x.filtered_stream.rule_tag_prefix}{handle.handle}"
        budget = x.filtered_stream.max_rule_length - len(suffix) - 2  # the parentheses
        for index, group in enumerate(_pack(terms, budget)):
            value = f"({' OR '.join(group)}){suffix}" if len(group) > 1 else group[0] + suffix
            rules.append(StreamRule(value, tag if index == 0 else f"{tag}#{index + 1}"))
    return rules


def handle_terms(handle: HandleConfig) -> list[str]:
    name = handle.username
    terms = [f"@{name}", f"to:{name}", f"from:{name}"]
    terms += [_quote(k) for k in handle.listen.keywords]
    terms += ["#" + h.lstrip("#") for h in handle.listen.hashtags]
    terms += ["$" + c.lstrip("$").upper() for c in handle.listen.cashtags]
    return list(dict.fromkeys(terms))


def _quote(keyword: str) -> str:
    keyword = keyword.replace('"', "")
    return f'"{keyword}"' if " " in keyword else keyword


def _pack(terms: list[str], budget: int) -> list[list[str]]:
    """Greedily fill rules with ``a OR b OR ...`` up to ``budget`` characters each."""
    groups: list[list[str]] = [[]]
    length = 0
    for term in terms:
        if len(term) > budget:
            raise ValueError(f"listening term {term!r} is longer than a rule may be")
        extra = len(term) + (4 if groups[-1] else 0)
        if length + extra > budget:
            groups.append([])
            extra, length = len(term), 0
        groups[-1].append(term)
        length += extra
    return groups


def plan_sync(existing: list[dict], desired: list[StreamRule], tag_prefix: str) -> RuleChanges:
    """What to add and delete so that the owned rules are exactly ``desired``.

    ``existing`` is what X returns (``{"id", "value", "tag"}``). Rules whose tag does not start
    with ``tag_prefix`` belong to someone else and are never touched.
    """
    owned = [r for r in existing if (r.get("tag") or "").startswith(tag_prefix)]
    have = {StreamRule(r["value"], r.get("tag") or ""): r["id"] for r in owned}
    wanted = set(desired)
    return RuleChanges(
        add=sorted(wanted - have.keys()),
        delete_ids=sorted(rule_id for rule, rule_id in have.items() if rule not in wanted),
    )
