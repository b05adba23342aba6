"""Filtered-stream rules derived from the configured handles, and how to synchronize them.

Each handle gets rules matching tweets that mention it, reply to it or are sent by it (the
brand's replies, for response times), plus its extra keywords, hashtags and cashtags. Every
rule is tagged ``<prefix>@Handle`` (``#2``, ``#3``... when a handle's terms need more rules
than one rule's length allows), so a keyword match still says which handle it is for, and so
synchronization touches only the rules this configuration owns.

X refuses a rule whose value another rule on the app already has (``DuplicateRule``), whoever
owns that rule. Leaning on another team's rule would leave the handle uncovered the day they
delete it, so the handle's rule takes a distinct value that matches the same tweets
(``variants``), and synchronization accepts that value as the rule's from then on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from switchboard.ingest.config import IngestFileConfig
from switchboard.shared.config import HandleConfig


@dataclass(frozen=True, slots=True, order=True)
class StreamRule:
    """A rule as X stores it (value, tag), with what it was built from."""

    value: str
    tag: str
    handle: str = field(default="", compare=False)
    terms: tuple[str, ...] = field(default=(), compare=False)
    suffix: str = field(default="", compare=False)
    original: str = field(default="", compare=False)  # the configured value, once a variant

    def without(self, refused: set[str]) -> StreamRule | None:
        """The same rule without the ``refused`` terms; None when no term is left."""
        kept = tuple(t for t in self.terms if t not in refused)
        if not kept:
            return None
        return replace(self, value=rule_value(kept, self.suffix), terms=kept, original="")

    def variant(self) -> StreamRule | None:
        """The next distinct value matching the same tweets, after a DuplicateRule."""
        values = [self.canonical, *variants(self.canonical)]
        position = values.index(self.value) if self.value in values else len(values)
        if position + 1 >= len(values):
            return None
        return replace(self, value=values[position + 1], original=self.canonical)

    @property
    def canonical(self) -> str:
        """The value as configured, before any variant."""
        return self.original or self.value


@dataclass(frozen=True, slots=True)
class RuleChanges:
    add: list[StreamRule]
    delete_ids: list[str]


NO_ADS = " -is:nullcast"
VARIANT_ROOM = len(NO_ADS)  # what the longest of ``variants`` adds to a value (X counts it all)


def desired_rules(config: IngestFileConfig) -> list[StreamRule]:
    x = config.ingest.x
    suffix = "" if config.ingest.include_retweets else " -is:retweet"
    rules = []
    for handle in config.handles:
        terms = handle_terms(handle)
        tag = f"{x.filtered_stream.rule_tag_prefix}{handle.handle}"
        # room for the parentheses and for the longest variant a DuplicateRule may need
        budget = x.filtered_stream.max_rule_length - len(suffix) - 2 - VARIANT_ROOM
        for index, group in enumerate(_pack(terms, budget)):
            rule_tag = tag if index == 0 else f"{tag}#{index + 1}"
            value = rule_value(group, suffix)
            rules.append(StreamRule(value, rule_tag, handle.handle, tuple(group), suffix))
    return rules


def rule_value(terms: list[str] | tuple[str, ...], suffix: str) -> str:
    return f"({' OR '.join(terms)}){suffix}" if len(terms) > 1 else terms[0] + suffix


def variants(value: str) -> list[str]:
    """Values that match what ``value`` matches but are not the same string, in the order
    they are tried: grouped once more, then without promoted-only posts (ads, which are no
    one's message to the company)."""
    return [f"({value})", f"{value}{NO_ADS}"]


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
    with ``tag_prefix`` belong to someone else and are never touched. An owned rule with a
    desired rule's tag and one of its ``variants`` is that rule (adopted after a duplicate).
    """
    owned = [r for r in existing if (r.get("tag") or "").startswith(tag_prefix)]
    keep: set[str] = set()
    add = []
    for rule in sorted(desired):
        accepted = {rule.value, *variants(rule.value)}
        match = next(
            (r["id"] for r in owned if r.get("tag") == rule.tag and r["value"] in accepted), None
        )
        if match is None:
            add.append(rule)
        else:
            keep.add(match)
    return RuleChanges(add=add, delete_ids=sorted(r["id"] for r in owned if r["id"] not in keep))


@dataclass(frozen=True, slots=True)
class RuleStatus:
    """How one rule stands on X, for ``switchboard ingest rules``."""

    tag: str
    value: str  # as configured
    state: str  # in_place, adopted_variant, missing, foreign_duplicate, stale
    on_x: str | None = None  # the value X holds for it, when different or stale
    foreign: str | None = None  # "id (tag)" of the foreign rule with the configured value


def rule_status(
    existing: list[dict], desired: list[StreamRule], tag_prefix: str
) -> list[RuleStatus]:
    """Each configured rule's state on X, then the owned rules no longer configured."""
    owned = [r for r in existing if (r.get("tag") or "").startswith(tag_prefix)]
    foreign = {r["value"]: r for r in existing if r not in owned}
    changes = plan_sync(existing, desired, tag_prefix)
    stale = set(changes.delete_ids)
    statuses = []
    for rule in sorted(desired):
        twin = foreign.get(rule.value)
        twin_text = f"{twin['id']} ({twin.get('tag') or 'no tag'})" if twin else None
        mine = next((r for r in owned if r.get("tag") == rule.tag and r["id"] not in stale), None)
        if mine is None:
            state = "foreign_duplicate" if twin else "missing"
            statuses.append(RuleStatus(rule.tag, rule.value, state, foreign=twin_text))
        elif mine["value"] == rule.value:
            statuses.append(RuleStatus(rule.tag, rule.value, "in_place"))
        else:
            statuses.append(
                RuleStatus(rule.tag, rule.value, "adopted_variant", mine["value"], twin_text)
            )
    for r in owned:
        if r["id"] in stale:
            statuses.append(RuleStatus(r.get("tag") or "", r["value"], "stale", r["value"]))
    return statuses
