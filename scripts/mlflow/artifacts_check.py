"""Logs and reads back artifacts and a model through the official MLflow client, unmodified.

Run with the venv of scripts/mlflow/install.sh (mlflow-skinny with numpy, pandas and cloudpickle for pyfunc), with
MLFLOW_TRACKING_URI pointing at a Ferry server and MLFLOW_TRACKING_TOKEN holding a Ferry API token. Exits 0 and
prints `OK <experiment id> <run id> <model id>` when every check holds; an assertion names what did not.

Checks: log_artifact, log_artifacts with nested folders, log_text, log_dict, list_artifacts at several depths,
download_artifacts of a file and of a folder compared byte for byte, a 20 MB file (streamed both ways), and a pyfunc
model logged with mlflow.pyfunc.log_model, then loaded by models:/<id> and by runs:/<run>/model and asked to predict.
"""

import filecmp
import hashlib
import json
import os
import sys
import tempfile

import mlflow
import mlflow.pyfunc
from mlflow import MlflowClient

EXPERIMENT = os.environ.get("FERRY_CHECK_EXPERIMENT", "ferry-artifacts-check")
BIG_BYTES = 20 * 1000 * 1000


class AddN(mlflow.pyfunc.PythonModel):
    """A model with state, so that loading it back must restore what was pickled."""

    def __init__(self, n):
        self.n = n

    def predict(self, context, model_input, params=None):
        return [x + self.n for x in model_input["x"]]


def listing(client, run_id, path=None):
    return sorted((f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run_id, path))


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    client = MlflowClient()
    experiment = mlflow.set_experiment(EXPERIMENT)
    work = tempfile.mkdtemp(prefix="ferry-artifacts-")
    single = os.path.join(work, "notes.txt")
    with open(single, "w") as f:
        f.write("hello from the artifact check\n")
    tree = os.path.join(work, "tree")
    os.makedirs(os.path.join(tree, "a", "b"))
    files = {
        "top.json": b'{"k": 1}\n',
        "a/one.bin": bytes(range(256)) * 17,
        "a/b/two.txt": "nested, with ünïcode\n".encode(),
        "a/b/with space.txt": b"a name with a space\n",
    }
    for rel, data in files.items():
        with open(os.path.join(tree, rel), "wb") as f:
            f.write(data)
    big = os.path.join(work, "big.bin")
    with open(big, "wb") as f:
        block = os.urandom(1 << 20)
        written = 0
        while written < BIG_BYTES:
            part = block[: min(len(block), BIG_BYTES - written)]
            f.write(part)
            written += len(part)

    with mlflow.start_run(run_name="artifacts") as run:
        run_id = run.info.run_id
        mlflow.log_param("n", 3)
        mlflow.log_artifact(single)
        mlflow.log_artifact(single, artifact_path="copies")
        mlflow.log_artifacts(tree, artifact_path="tree")
        mlflow.log_text("some text\n", "texts/greeting.txt")
        mlflow.log_dict({"a": 1, "b": [1, 2]}, "config.json")
        mlflow.log_artifact(big, artifact_path="large")
        info = mlflow.pyfunc.log_model(name="model", python_model=AddN(3))

    # Listings, at the root and below, with MLflow's shapes: folders without a size.
    root = listing(client, run_id)
    assert ("notes.txt", False, len(b"hello from the artifact check\n")) in root, root
    assert ("config.json", False, len(json.dumps({"a": 1, "b": [1, 2]}, indent=2))) in root or any(
        p == "config.json" and not d for p, d, _ in root
    ), root
    for folder in ["copies", "tree", "texts", "large"]:
        assert (folder, True, None) in root, (folder, root)
    assert listing(client, run_id, "tree") == [
        ("tree/a", True, None),
        ("tree/top.json", False, len(files["top.json"])),
    ], listing(client, run_id, "tree")
    assert listing(client, run_id, "tree/a/b") == [
        ("tree/a/b/two.txt", False, len(files["a/b/two.txt"])),
        ("tree/a/b/with space.txt", False, len(files["a/b/with space.txt"])),
    ], listing(client, run_id, "tree/a/b")
    assert listing(client, run_id, "large") == [("large/big.bin", False, BIG_BYTES)], listing(client, run_id, "large")
    assert listing(client, run_id, "no/such/folder") == [], "a folder that does not exist lists as empty"

    # Downloads: a file, a folder, the big file; byte-identical.
    out = tempfile.mkdtemp(prefix="ferry-download-")
    got = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="notes.txt", dst_path=out)
    assert filecmp.cmp(got, single, shallow=False), got
    got_tree = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="tree", dst_path=out)
    for rel, data in files.items():
        with open(os.path.join(got_tree, rel), "rb") as f:
            assert f.read() == data, rel
    got_big = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="large/big.bin", dst_path=out)
    assert os.path.getsize(got_big) == BIG_BYTES and digest(got_big) == digest(big), got_big
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/texts/greeting.txt") == "some text\n"
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/config.json") == {"a": 1, "b": [1, 2]}

    # The model: a logged model of the run, READY, with its files in its own artifact folder.
    model_id = info.model_id
    assert model_id.startswith("m-") and len(model_id) == 34, model_id
    model = client.get_logged_model(model_id)
    assert model.status.to_proto() == 2 or str(model.status).endswith("READY"), model.status
    assert model.source_run_id == run_id, model
    assert model.artifact_location == f"mlflow-artifacts:/{experiment.experiment_id}/models/{model_id}/artifacts", model
    names = {os.path.basename(f.path) for f in client.list_logged_model_artifacts(model_id)}
    assert {"MLmodel", "python_model.pkl"} <= names, names
    found = client.search_logged_models(experiment_ids=[experiment.experiment_id], filter_string="name = 'model'")
    assert [m.model_id for m in found] == [model_id], found
    import pandas as pd

    frame = pd.DataFrame({"x": [1, 2]})
    for uri in [f"models:/{model_id}", f"runs:/{run_id}/model"]:
        loaded = mlflow.pyfunc.load_model(uri)
        assert list(loaded.predict(frame)) == [4, 5], uri

    print(f"OK {experiment.experiment_id} {run_id} {model_id}")


if __name__ == "__main__":
    sys.exit(main())
