"""Structured logs: every record becomes one JSON line, whatever its extras hold."""
from __future__ import annotations

import json
import logging

from shared.logging import JsonFormatter


def test_extras_with_non_text_keys_are_logged_not_lost():
    """serving's replica logged {partition number: offset}; orjson refused int keys and the line was lost."""
    record = logging.LogRecord("replica", logging.INFO, __file__, 1, "caught up", None, None)
    record.positions = {0: 12, 3: 7}
    line = json.loads(JsonFormatter("serving").format(record))
    assert line["msg"] == "caught up" and line["positions"] == {"0": 12, "3": 7}
