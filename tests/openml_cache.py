"""An OpenML cache in scikit-learn's own layout, written by tests (no network): a tiny data set
that ``trainers.openml`` loads through the real ``fetch_openml`` path."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

TINY_ID = 90001
TINY_ROWS = 60


def tiny_frame(n: int = TINY_ROWS) -> pd.DataFrame:
    """Row id, three numeric features, a 0/1 numeric 'level' and a nominal 3-class target."""
    rng = np.random.default_rng(1)
    labels = np.array(["setosa", "versicolor", "virginica"])[np.arange(n) % 3]
    return pd.DataFrame(
        {
            "row_id": np.arange(n),
            "f1": rng.normal(0.0, 1.0, n).round(4),
            "f2": rng.normal(3.0, 2.0, n).round(4) + (labels == "virginica"),
            "f3": rng.integers(0, 5, n),
            "level": np.arange(n) % 2,
            "class": labels,
        }
    )


def write_openml_cache(home: Path, data_id: int = TINY_ID, name: str = "tiny") -> Path:
    """Write what ``fetch_openml(name, data_home=home/"openml")`` reads, gzip-compressed, where
    scikit-learn looks: ``openml.org/<path of the API or download URL>.gz`` under ``home/openml``.

    The files are the name lookup, the description (with the ARFF's URL and md5), the features
    (types and flags: 'row_id' is a row identifier, 'class' the default target) and the qualities
    (NumberOfInstances), as openml.org serves them.
    """
    frame = tiny_frame()
    root = home / "openml" / "openml.org"
    nominal = sorted(set(frame["class"]))
    arff = "\n".join(
        [
            f"@RELATION {name}",
            *(f"@ATTRIBUTE {c} NUMERIC" for c in frame.columns[:-1]),
            "@ATTRIBUTE class {" + ",".join(nominal) + "}",
            "@DATA",
            *(",".join(map(str, row)) for row in frame.itertuples(index=False)),
            "",
        ]
    ).encode()
    arff_url = f"https://api.openml.org/data/v1/download/{data_id}/{name}.arff"
    features = [
        {
            "index": str(i),
            "name": column,
            "data_type": "nominal" if column == "class" else "numeric",
            **({"nominal_value": nominal} if column == "class" else {}),
            "is_target": "true" if column == "class" else "false",
            "is_ignore": "false",
            "is_row_identifier": "true" if column == "row_id" else "false",
            "number_of_missing_values": "0",
        }
        for i, column in enumerate(frame.columns)
    ]
    entry = {"did": data_id, "name": name, "version": 1, "status": "active", "format": "ARFF"}
    files = {
        f"api/v1/json/data/list/data_name/{name}/limit/2/status/active/": {
            "data": {"dataset": [entry]}
        },
        f"api/v1/json/data/{data_id}": {
            "data_set_description": {
                "id": str(data_id),
                "name": name,
                "version": "1",
                "description": "A tiny data set written by the gradsweep tests.",
                "format": "ARFF",
                "url": arff_url,
                "file_id": str(data_id),
                "default_target_attribute": "class",
                "status": "active",
                "md5_checksum": hashlib.md5(arff).hexdigest(),
            }
        },
        f"api/v1/json/data/features/{data_id}": {"data_features": {"feature": features}},
        f"api/v1/json/data/qualities/{data_id}": {
            "data_qualities": {
                "quality": [
                    {"name": "NumberOfInstances", "value": f"{len(frame)}.0"},
                    {"name": "NumberOfFeatures", "value": f"{frame.shape[1]}.0"},
                ]
            }
        },
    }
    for path, content in files.items():
        target = root / f"{path}.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(gzip.compress(json.dumps(content).encode()))
    arff_path = root / f"data/v1/download/{data_id}/{name}.arff.gz"
    arff_path.parent.mkdir(parents=True, exist_ok=True)
    arff_path.write_bytes(gzip.compress(arff))
    return home
