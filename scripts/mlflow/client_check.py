"""Logs and reads back everything the tracking tests need through the official MLflow client, unmodified.

Run with the venv of scripts/mlflow/install.sh, with MLFLOW_TRACKING_URI pointing at a Ferry server and
MLFLOW_TRACKING_TOKEN holding a Ferry API token. Exits 0 and prints `OK <run id> <second run id>` when every check
holds; an assertion names what did not.
"""

import math
import time

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

EXPERIMENT = "ferry-client-check"


def main():
    client = MlflowClient()
    experiment = mlflow.set_experiment(EXPERIMENT)
    assert experiment.name == EXPERIMENT, experiment
    assert experiment.experiment_id != "0", experiment
    assert mlflow.set_experiment(EXPERIMENT).experiment_id == experiment.experiment_id, "set_experiment is idempotent"

    with mlflow.start_run(run_name="first") as run:
        run_id = run.info.run_id
        mlflow.log_param("lr", 0.01)
        mlflow.log_params({"batch": 32, "optimizer": "adam"})
        mlflow.log_param("lr", 0.01)  # the same value again is fine
        for step, loss in enumerate([0.9, 0.5, 0.25]):
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_metrics({"accuracy": 0.75, "f1": 0.5}, step=2)
        mlflow.set_tag("team", "vision")
        mlflow.set_tags({"stage": "dev"})
        try:
            mlflow.log_param("lr", 0.02)
            raise AssertionError("changing a param was accepted")
        except MlflowException as e:
            assert e.error_code == "INVALID_PARAMETER_VALUE", e

    got = client.get_run(run_id)
    assert got.info.status == "FINISHED", got.info
    assert got.info.end_time and got.info.start_time and got.info.end_time >= got.info.start_time, got.info
    assert got.info.run_name == "first", got.info
    assert got.info.experiment_id == experiment.experiment_id, got.info
    assert got.info.artifact_uri == f"mlflow-artifacts:/{experiment.experiment_id}/{run_id}/artifacts", got.info
    assert got.info.lifecycle_stage == "active", got.info
    assert got.data.params == {"lr": "0.01", "batch": "32", "optimizer": "adam"}, got.data.params
    assert got.data.metrics == {"loss": 0.25, "accuracy": 0.75, "f1": 0.5}, got.data.metrics
    assert got.data.tags["team"] == "vision" and got.data.tags["stage"] == "dev", got.data.tags
    assert got.data.tags["mlflow.runName"] == "first", got.data.tags
    assert "mlflow.user" in got.data.tags and "mlflow.source.name" in got.data.tags, got.data.tags

    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.5), (2, 0.25)], history
    assert client.get_metric_history(run_id, "never") == [], "an unlogged metric has an empty history"

    # A second run through MlflowClient alone.
    second = client.create_run(experiment.experiment_id, run_name="second", tags={"team": "nlp"})
    second_id = second.info.run_id
    assert second.info.status == "RUNNING", second.info
    client.log_param(second_id, "lr", "0.1")
    client.log_metric(second_id, "loss", 2.0, step=0, timestamp=int(time.time() * 1000))
    client.log_metric(second_id, "loss", 1.5, step=1)
    client.log_metric(second_id, "odd", float("nan"))
    client.log_metric(second_id, "big", float("inf"))
    client.log_batch(
        second_id,
        metrics=[mlflow.entities.Metric("acc", 0.5 + i / 100, int(time.time() * 1000), i) for i in range(5)],
        params=[mlflow.entities.Param("layers", "4")],
        tags=[mlflow.entities.RunTag("temp", "x")],
    )
    client.set_tag(second_id, "phase", "eval")
    client.delete_tag(second_id, "temp")
    client.set_terminated(second_id, status="FAILED")
    run2 = client.get_run(second_id)
    assert run2.info.status == "FAILED", run2.info
    assert run2.data.params == {"lr": "0.1", "layers": "4"}, run2.data.params
    assert run2.data.metrics["loss"] == 1.5 and run2.data.metrics["acc"] == 0.54, run2.data.metrics
    assert math.isnan(run2.data.metrics["odd"]) and run2.data.metrics["big"] == float("inf"), run2.data.metrics
    assert "temp" not in run2.data.tags and run2.data.tags["phase"] == "eval", run2.data.tags

    # Paging through a history.
    page = client.get_metric_history(second_id, "acc")
    assert [m.value for m in page] == [0.5, 0.51, 0.52, 0.53, 0.54], page
    paged = client._tracking_client.store.get_metric_history(second_id, "acc", max_results=2)
    assert len(paged) == 2 and paged.token, paged
    rest = client._tracking_client.store.get_metric_history(second_id, "acc", max_results=10, page_token=paged.token)
    assert [m.value for m in rest] == [0.52, 0.53, 0.54] and not rest.token, rest

    # Search with a filter and an order.
    ids = [experiment.experiment_id]
    found = client.search_runs(ids, filter_string="metrics.loss > 1", order_by=["metrics.loss DESC"])
    assert [r.info.run_id for r in found] == [second_id], found
    found = client.search_runs(ids, filter_string="params.lr = '0.01' and tags.team = 'vision'")
    assert [r.info.run_id for r in found] == [run_id], found
    found = client.search_runs(ids, filter_string="attributes.status = 'FINISHED'")
    assert [r.info.run_id for r in found] == [run_id], found
    found = client.search_runs(ids, order_by=["metrics.loss ASC"])
    assert [r.info.run_id for r in found] == [run_id, second_id], found
    found = client.search_runs(ids, order_by=["start_time DESC"], max_results=1)
    assert [r.info.run_id for r in found] == [second_id] and found.token, found
    more = client.search_runs(ids, order_by=["start_time DESC"], max_results=1, page_token=found.token)
    assert [r.info.run_id for r in more] == [run_id] and not more.token, more
    frame = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string="metrics.loss < 1", output_format="list")
    assert [r.info.run_id for r in frame] == [run_id], frame
    try:
        client.search_runs(ids, filter_string="metrics.loss >> 1")
        raise AssertionError("a malformed filter was accepted")
    except MlflowException as e:
        assert e.error_code == "INVALID_PARAMETER_VALUE", e

    # Experiments.
    names = [e.name for e in client.search_experiments()]
    assert EXPERIMENT in names and "Default" in names, names
    assert [e.name for e in client.search_experiments(filter_string=f"name = '{EXPERIMENT}'")] == [EXPERIMENT]
    assert client.get_experiment(experiment.experiment_id).name == EXPERIMENT
    assert client.get_experiment_by_name("no-such-experiment") is None
    other = client.create_experiment("ferry-other", tags={"owner": "me"})
    client.rename_experiment(other, "ferry-renamed")
    assert client.get_experiment(other).name == "ferry-renamed"
    assert client.get_experiment(other).tags == {"owner": "me"}
    client.set_experiment_tag(other, "k", "v")
    client.delete_experiment(other)
    assert client.get_experiment(other).lifecycle_stage == "deleted"
    assert "ferry-renamed" not in [e.name for e in client.search_experiments()]
    client.restore_experiment(other)
    try:
        client.create_experiment(EXPERIMENT)
        raise AssertionError("a duplicate experiment was created")
    except MlflowException as e:
        assert e.error_code == "RESOURCE_ALREADY_EXISTS", e

    # Deleting and restoring a run.
    client.delete_run(second_id)
    assert client.get_run(second_id).info.lifecycle_stage == "deleted"
    assert [r.info.run_id for r in client.search_runs(ids)] == [run_id]
    client.restore_run(second_id)
    assert len(client.search_runs(ids)) == 2

    try:
        client.get_run("0" * 32)
        raise AssertionError("an unknown run was found")
    except MlflowException as e:
        assert e.error_code == "RESOURCE_DOES_NOT_EXIST", e

    print("OK", run_id, second_id)


if __name__ == "__main__":
    main()
