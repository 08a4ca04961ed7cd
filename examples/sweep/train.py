"""A small real training run for sweeps: logistic regression on random Fourier features of a two-spirals dataset,
trained by minibatch SGD in plain Python (no packages), logging the validation loss after every epoch.

    python3 train.py --lr 0.05 --l2 1e-4 --batch 32 [--epochs 27] [--features 48]

The dataset is generated from a fixed seed, so every trial trains on the same data and only the hyperparameters
differ. The loss goes to the job's MLflow run through the tracking REST API with the variables Ferry gives every job
(MLFLOW_TRACKING_URI, MLFLOW_RUN_ID, MLFLOW_TRACKING_TOKEN); with the `mlflow` package installed,
`mlflow.log_metric("val_loss", loss, step=epoch)` does the same. Outside Ferry it just prints.
"""

import argparse
import json
import math
import os
import random
import sys
import time
import urllib.request


def spirals(n, rng, noise=0.25):
    points = []
    for i in range(n):
        label = i % 2
        t = rng.uniform(0.25, 3.0) * math.pi
        sign = 1 if label else -1
        x = sign * t * math.cos(t) / 3 + rng.gauss(0, noise)
        y = sign * t * math.sin(t) / 3 + rng.gauss(0, noise)
        points.append(((x, y), label))
    return points


def fourier(points, features, rng):
    w = [(rng.gauss(0, 1.5), rng.gauss(0, 1.5), rng.uniform(0, 2 * math.pi)) for _ in range(features)]
    scale = math.sqrt(2.0 / features)
    return [([scale * math.cos(a * x + b * y + c) for a, b, c in w], label) for (x, y), label in points]


def log_loss(weights, bias, data):
    total = 0.0
    for xs, label in data:
        z = bias + sum(w * x for w, x in zip(weights, xs))
        p = 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))
        q = p if label else 1 - p
        total -= math.log(max(q, 1e-12))
    return total / len(data)


def log_metric(key, value, step):
    uri, run = os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_RUN_ID")
    if not (uri and run):
        return
    body = json.dumps({"run_id": run, "key": key, "value": value, "step": step,
                       "timestamp": int(time.time() * 1000)}).encode()
    headers = {"Content-Type": "application/json"}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]
    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/runs/log-metric", data=body,
                                     headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--l2", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=27)
    parser.add_argument("--features", type=int, default=64)
    args = parser.parse_args()
    data_rng = random.Random(0)
    points = spirals(2400, data_rng)
    data = fourier(points, args.features, data_rng)
    train, val = data[:1800], data[1800:]
    weights, bias = [0.0] * args.features, 0.0
    order = random.Random(1)
    for epoch in range(1, args.epochs + 1):
        order.shuffle(train)
        for start in range(0, len(train), args.batch):
            batch = train[start:start + args.batch]
            grad_w, grad_b = [0.0] * args.features, 0.0
            for xs, label in batch:
                z = bias + sum(w * x for w, x in zip(weights, xs))
                p = 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))
                err = p - label
                grad_b += err
                for j, x in enumerate(xs):
                    grad_w[j] += err * x
            n = len(batch)
            bias -= args.lr * grad_b / n
            weights = [w - args.lr * (g / n + args.l2 * w) for w, g in zip(weights, grad_w)]
        loss = log_loss(weights, bias, val)
        log_metric("val_loss", loss, epoch)
        print(f"epoch {epoch} val_loss {loss:.5f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
