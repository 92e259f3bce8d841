"""The MongoDB indexes search needs, created at start-up.

Value lookups: one compound multikey index per value kind, ``(type, idx.<kind>.p,
value fields...)``, answers an ``$elemMatch`` on a parameter and its value.
Sorts: the reading worklist and the EHR views sort on a date (studies by
``started``, reports and appointments by ``date``, orders by ``authored``);
an index in the exact order ``sort_spec`` asks for (presence flag, key, pk)
lets the server walk it and stop at the page size instead of sorting every
match in memory. See https://www.mongodb.com/docs/manual/core/index-multikey/
"""

from __future__ import annotations

from pymongo import ASCENDING, DESCENDING, IndexModel

KINDS = ("token", "string", "date", "number", "quantity", "reference", "uri", "composite")
VALUE_FIELDS: dict[str, tuple[str, ...]] = {
    "token": ("c", "s"),
    "string": ("n",),
    "date": ("lo", "hi"),
    "number": ("v",),
    "quantity": ("v",),
    "reference": ("ri", "rt"),
    "uri": ("u",),
    "composite": (),
}
# Sort parameters of the key searches, both directions.
SORTED_PARAMS = ("started", "date", "authored")


def search_indexes() -> list[IndexModel]:
    """The ``resources`` indexes for value lookups, reverse references and sorts."""
    models: list[IndexModel] = []
    for kind in KINDS:
        fields = [("type", ASCENDING), (f"idx.{kind}.p", ASCENDING)]
        fields += [(f"idx.{kind}.{f}", ASCENDING) for f in VALUE_FIELDS[kind]]
        models.append(IndexModel(fields))
    models.append(IndexModel([("idx.reference.rt", ASCENDING), ("idx.reference.ri", ASCENDING)]))
    for param in SORTED_PARAMS:
        for side, direction in (("a", ASCENDING), ("d", DESCENDING)):
            key = f"sort.{param}"
            models.append(
                IndexModel(
                    [
                        ("type", ASCENDING),
                        (f"{key}.m", DESCENDING),
                        (f"{key}.{side}", direction),
                        ("pk", ASCENDING),
                    ],
                    name=f"sort_{param}_{side}",
                )
            )
    return models
