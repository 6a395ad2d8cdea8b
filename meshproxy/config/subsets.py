"""
Reading MOSN's subset load-balancing keys: a host's C{metadata}, a route's C{metadata_match}, and a
cluster's C{lb_subset_config}.

MOSN puts the labels under C{filter_metadata["mosn.lb"]}; both shapes are read as sorted C{(key, value)}
string pairs, so two equal label sets compare equal.
"""

from __future__ import annotations

from meshproxy.config.clustermodel import SubsetConfig
from meshproxy.config.jsonvalues import describe, joinKey
from meshproxy.config.reader import Fields, KeySpec, objectPairs

METADATA_KEYS = KeySpec(known=("filter_metadata",))
FILTER_METADATA_KEYS = KeySpec(known=("mosn.lb",), caseSensitive=True)
SUBSET_KEYS = KeySpec(known=("fall_back_policy", "default_subset", "subset_selectors"))
#: MOSN's numbers for C{fall_back_policy}.
FALLBACK_POLICIES = {0: "NO_FALLBACK", 1: "ANY_ENDPOINT", 2: "DEFAULT_SUBSET"}

Labels = tuple[tuple[str, str], ...]


def parseLabels(fields: Fields, key: str) -> Labels:
    """
    C{{"filter_metadata": {"mosn.lb": {"k": "v"}}}} at C{key}: the labels, sorted.  Absent or empty: none.
    """
    value = fields.raw(key)
    if value is None or objectPairs(value) == []:
        return ()
    metadata = fields.object(key, METADATA_KEYS)
    if metadata is None:
        return ()
    value = metadata.raw("filter_metadata")
    if value is None or objectPairs(value) == []:
        return ()
    filterMetadata = metadata.object("filter_metadata", FILTER_METADATA_KEYS)
    if filterMetadata is None or not filterMetadata.has("mosn.lb"):
        return ()
    return _stringMap(filterMetadata, "mosn.lb")


def _stringMap(fields: Fields, key: str) -> Labels:
    pairs = objectPairs(fields.raw(key))
    if pairs is None:
        fields.problem(key, f"{describe(fields.raw(key))} is not an object: expected an object of strings")
        return ()
    labels = {}
    for name, value in pairs:
        if not isinstance(value, str):
            fields.problems.add(joinKey(fields.pathOf(key), name), f"{describe(value)} is not a string: expected a string")
            continue
        labels[name] = value
    return tuple(sorted(labels.items()))


def parseSubsetConfig(fields: Fields) -> SubsetConfig | None:
    """
    A cluster's C{lb_subset_config}: L{None} when absent or empty.
    """
    value = fields.raw("lb_subset_config")
    if value is None or objectPairs(value) == []:
        return None
    subset = fields.object("lb_subset_config", SUBSET_KEYS)
    if subset is None:
        return None
    number = subset.integer("fall_back_policy", 0, 0, 2)
    defaultSubset: Labels = ()
    if subset.has("default_subset") and subset.raw("default_subset") is not None:
        defaultSubset = _stringMap(subset, "default_subset")
    selectors = []
    for path, selector in subset.items("subset_selectors"):
        if not isinstance(selector, list) or not selector or not all(isinstance(k, str) for k in selector):
            subset.problems.add(path, f"{describe(selector)} is not a key list: expected a list of label names")
            continue
        selectors.append(tuple(sorted(set(selector))))
    policy = FALLBACK_POLICIES[number]
    if policy == "DEFAULT_SUBSET" and not defaultSubset:
        subset.problem("fall_back_policy", "2 (DEFAULT_SUBSET) needs a non-empty default_subset")
    return SubsetConfig(fallbackPolicy=policy, defaultSubset=defaultSubset, selectors=tuple(selectors))

