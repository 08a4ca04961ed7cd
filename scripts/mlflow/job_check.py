"""Runs inside a Ferry job, with the official MLflow client unmodified: `mlflow.start_run()` must attach to the run
Ferry made for the job (MLFLOW_RUN_ID, MLFLOW_TRACKING_URI and MLFLOW_TRACKING_TOKEN come from Ferry), and
everything logged must read back. Prints `OK <run id>` when every check holds; an assertion names what did not.
"""

import os
import tempfile

import mlflow
from mlflow import MlflowClient


def main():
    run_id = os.environ["MLFLOW_RUN_ID"]
    assert os.environ["MLFLOW_TRACKING_URI"].startswith("http://"), os.environ["MLFLOW_TRACKING_URI"]
    with mlflow.start_run() as run:
        assert run.info.run_id == run_id, (run.info.run_id, run_id)
        assert run.info.experiment_id == os.environ["MLFLOW_EXPERIMENT_ID"], run.info
        mlflow.log_param("lr", 0.1)
        mlflow.log_params({"layers": 4, "optimizer": "sgd"})
        for step, loss in enumerate([1.0, 0.5, 0.25, 0.125]):
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_metrics({"accuracy": 0.9}, step=3)
        mlflow.set_tag("stage", "job")
        mlflow.log_text("trained in a Ferry job\n", "notes/summary.txt")
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "weights.bin")
            with open(path, "wb") as f:
                f.write(bytes(range(256)) * 64)
            mlflow.log_artifact(path, artifact_path="model")
    client = MlflowClient()
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED", got.info
    assert got.data.params == {"lr": "0.1", "layers": "4", "optimizer": "sgd"}, got.data.params
    assert got.data.metrics == {"loss": 0.125, "accuracy": 0.9}, got.data.metrics
    assert got.data.tags["stage"] == "job" and got.data.tags["ferry.job_id"] == os.environ["FERRY_JOB_ID"], got.data.tags
    history = client.get_metric_history(run_id, "loss")
    assert [m.value for m in history] == [1.0, 0.5, 0.25, 0.125], history
    listed = sorted(f.path for f in client.list_artifacts(run_id))
    assert listed == ["model", "notes"], listed
    with tempfile.TemporaryDirectory() as folder:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model/weights.bin", dst_path=folder)
        with open(local, "rb") as f:
            assert f.read() == bytes(range(256)) * 64, "the artifact came back changed"
    print("OK", run_id, flush=True)


if __name__ == "__main__":
    main()
