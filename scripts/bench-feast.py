"""The Feast side of scripts/bench-serve: a feature repository whose online store is the stack's
Redis, holding the same users and the same 10 features persona serves, with the values persona
serves (read from its batch endpoint once). Numbers stay numbers; lists and maps become JSON
strings, as a Feast user would store them.

    python bench-feast.py <repo dir> <persona url> <redis host:port> <users> <names,comma-separated>

Prints the feature references (`user_features:<name>`) for the request body.
"""

import json
import os
import subprocess
import sys
import urllib.request
from datetime import datetime, timezone

import pandas as pd


def persona_values(url, users, names):
    ids = ["sim-u%04d" % n for n in range(1, users + 1)]
    rows = []
    for start in range(0, len(ids), 500):
        body = json.dumps(
            {"names": names, "entities": [{"entity": "user", "id": i} for i in ids[start : start + 500]]}
        ).encode()
        request = urllib.request.Request(
            url + "/api/v1/features/batch", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request) as response:
            for result in json.load(response)["results"]:
                rows.append((result["id"], {n: result["features"][n]["value"] for n in names}))
    return rows


def main():
    repo, url, redis, users, names = sys.argv[1:6]
    users, names = int(users), names.split(",")
    rows = persona_values(url, users, names)
    numeric = {
        n: all(isinstance(v[n], (int, float)) and not isinstance(v[n], bool) or v[n] is None for _, v in rows)
        for n in names
    }
    now = datetime.now(timezone.utc)
    frame = pd.DataFrame(
        {
            "user_id": [user for user, _ in rows],
            "event_timestamp": [now] * len(rows),
            **{
                n: [
                    (float(v[n]) if v[n] is not None else None)
                    if numeric[n]
                    else json.dumps(v[n])
                    for _, v in rows
                ]
                for n in names
            },
        }
    )
    os.makedirs(os.path.join(repo, "data"), exist_ok=True)
    frame.to_parquet(os.path.join(repo, "data", "users.parquet"))
    with open(os.path.join(repo, "feature_store.yaml"), "w") as out:
        out.write(
            "project: persona_bench\n"
            "registry: data/registry.db\n"
            "provider: local\n"
            "online_store:\n"
            "  type: redis\n"
            f'  connection_string: "{redis}"\n'
            "offline_store:\n"
            "  type: file\n"
            "entity_key_serialization_version: 3\n"
        )
    fields = ",\n        ".join(
        f'Field(name="{n}", dtype={"Float64" if numeric[n] else "String"})' for n in names
    )
    with open(os.path.join(repo, "features.py"), "w") as out:
        out.write(
            f"""from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource
from feast.types import Float64, String

user = Entity(name="user", join_keys=["user_id"])
source = FileSource(path="data/users.parquet", timestamp_field="event_timestamp")
user_features = FeatureView(
    name="user_features",
    entities=[user],
    ttl=timedelta(days=1),
    schema=[
        {fields}
    ],
    source=source,
    online=True,
)
"""
        )
    from feast import FeatureStore

    feast = os.path.join(os.path.dirname(sys.executable), "feast")
    subprocess.run([feast, "apply"], cwd=repo, check=True, stdout=subprocess.DEVNULL)
    store = FeatureStore(repo_path=repo)
    store.write_to_online_store("user_features", frame)
    check = store.get_online_features(
        features=[f"user_features:{n}" for n in names], entity_rows=[{"user_id": "sim-u0001"}]
    ).to_dict()
    if check.get(names[0]) is None:
        sys.exit("feast: the online store did not answer for sim-u0001")
    print(",".join(f"user_features:{n}" for n in names))


if __name__ == "__main__":
    main()
