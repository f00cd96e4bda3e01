"""Table cells of `inspect` and `runs show` keep long records readable; `--json` keeps everything."""

from __future__ import annotations

import json

from transferkit.cli.common import compact_json


def test_long_lists_keep_their_first_items_and_say_how_many_more():
    record = {"search": {"evaluations": [{"weights": [i, -i]} for i in range(40)], "folds": [0, 1]}, "r": 8}
    shown = json.loads(compact_json(record))
    assert shown["search"]["evaluations"][:4] == [{"weights": [i, -i]} for i in range(4)]
    assert shown["search"]["evaluations"][4:] == ["... 36 more (see --json)"]
    assert shown["search"]["folds"] == [0, 1] and shown["r"] == 8  # short lists and scalars unchanged
    assert json.loads(compact_json(record, max_items=100)) == record
