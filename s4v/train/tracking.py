"""MLflow tracking on rank 0: resolved config, step metrics, system metrics, eval metrics, artifacts.

Tracking is best effort: a tracking server that cannot be reached (at start or later) never stops
training; the first failure is reported once and the tracker turns itself off.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_URI = "sqlite:///mlflow.db"
_PARAM_MAX = 6000  # MLflow's limit on a param value's length


def resolve_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _reachable(uri: str, timeout: float = 3.0) -> str | None:
    """None if an HTTP tracking server answers /health, else why not."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            return None if r.status == 200 else f"HTTP {r.status}"
    except Exception as e:  # any failure (refused, DNS, timeout) means: do not track
        return repr(e)


class Tracker:
    """Thin MLflow wrapper; a no-op on ranks other than 0 or when disabled.

    A run's tracker starts (or continues, `run_id`) the active MLflow run, with system metrics; `child`
    gives a nested run under it (a sweep member's). Both write through `MlflowClient` by run id, so a
    child never takes over the active run and both share one error policy (`_call`)."""

    def __init__(
        self,
        enabled: bool,
        uri: str | None = None,
        experiment: str = "s4v",
        run_name: str | None = None,
        system_metrics: bool = True,
        system_metrics_interval: float = 10.0,
        run_id: str | None = None,
        resume_only: bool = False,
    ) -> None:
        self.active, self.nested = False, False
        self.run_id: str | None = None
        self.uri = resolve_uri(uri)
        if not enabled:
            return
        # Fail fast on a dead server instead of MLflow's default minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        problem = _reachable(self.uri)
        if problem is not None:
            self._warn(f"tracking server {self.uri} unreachable ({problem})")
            return
        try:
            import mlflow

            mlflow.set_tracking_uri(self.uri)
            mlflow.set_experiment(experiment)
            if system_metrics:
                mlflow.set_system_metrics_sampling_interval(system_metrics_interval)
            run = None
            if run_id:  # a resumed job continues its MLflow run, if this tracking store has it
                try:
                    run = mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
                except Exception:
                    run = None
            if run is None and resume_only:
                return
            if run is None:
                run = mlflow.start_run(run_name=run_name, log_system_metrics=system_metrics)
            self.client = mlflow.MlflowClient(self.uri)
            self.run_id = run.info.run_id
            self.active = True
        except Exception as e:
            self._warn(f"could not start an MLflow run at {self.uri} ({e!r})")

    def child(self, name: str, run_id: str | None = None) -> Tracker:
        """A nested run of this one named `name` (`run_id`: continue that child, a resumed sweep's member);
        inactive when this tracker is."""
        child = Tracker(False, self.uri)
        child.nested = True
        if not self.active:
            return child
        try:
            child.client = self.client
            if run_id is not None:
                self.client.update_run(run_id, status="RUNNING")
            else:
                experiment = self.client.get_run(self.run_id).info.experiment_id
                tags = {"mlflow.parentRunId": self.run_id}
                run_id = self.client.create_run(experiment, tags=tags, run_name=name).info.run_id
            child.run_id, child.active = run_id, True
        except Exception as e:
            child._warn(f"could not start MLflow child run {name!r} ({e!r})")
        return child

    def _warn(self, what: str) -> None:
        who = "this member is not tracked further" if self.nested else "training continues without tracking"
        print(f"[s4v] warning: {what}; {who}", file=sys.stderr, flush=True)
        self.active = False

    def _call(self, fn_name: str, *args: Any, **kwargs: Any) -> None:
        if not self.active:
            return
        try:
            getattr(self.client, fn_name)(self.run_id, *args, **kwargs)
        except Exception as e:
            self._warn(f"MLflow {fn_name} failed ({e!r})")

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self._call("log_batch", params=[Param(k, str(v)[:_PARAM_MAX]) for k, v in params.items()])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._call("log_batch", metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifacts", str(directory), artifact_path)

    def log_artifact(self, path: str | Path) -> None:
        self._call("log_artifact", str(path))

    def finish(self, status: str = "FINISHED") -> None:
        if self.active and not self.nested:  # ends the active run and its system-metrics thread
            try:
                import mlflow

                mlflow.end_run(status=status)
            except Exception as e:
                self._warn(f"MLflow end_run failed ({e!r})")
        else:
            self._call("set_terminated", status)
        self.active = False
