import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")


def shared_path(*parts):
    """A file in ../shared/data, or skip the test where the third-party data is absent."""
    p = os.path.join(SHARED, *parts)
    if not os.path.exists(p):
        pytest.skip(f"shared data not present: {p}")
    return p


@pytest.fixture
def concert_schema():
    from text2sql.schema import Schema
    entry = {
        "db_id": "concerts",
        "table_names_original": ["stadium", "singer", "concert", "singer_in_concert"],
        "table_names": ["stadium", "singer", "concert", "singer in concert"],
        "column_names_original": [[-1, "*"], [0, "Stadium_ID"], [0, "Name"], [0, "Capacity"],
                                  [1, "Singer_ID"], [1, "Name"], [1, "Age"], [1, "Country"],
                                  [2, "concert_ID"], [2, "Stadium_ID"], [2, "Year"],
                                  [3, "concert_ID"], [3, "Singer_ID"]],
        "column_names": [[-1, "*"], [0, "stadium id"], [0, "name"], [0, "capacity"],
                         [1, "singer id"], [1, "name"], [1, "age"], [1, "country"],
                         [2, "concert id"], [2, "stadium id"], [2, "year"],
                         [3, "concert id"], [3, "singer id"]],
        "column_types": ["text", "number", "text", "number", "number", "text", "number", "text",
                         "number", "number", "text", "number", "number"],
        "primary_keys": [1, 4, 8, 11],
        "foreign_keys": [[9, 1], [11, 8], [12, 4]],
    }
    return Schema.from_tables_json(entry)
