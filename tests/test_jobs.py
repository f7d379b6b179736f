"""Jobs: the document, listing, cancel, idempotency, `wait`, and recovery (DESIGN §2, §3)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from conftest import create_dataset, finished_job, make_client, push, rows_of

COLUMNS = [{"name": "id", "type": "integer"}, {"name": "v"}]


def accepted(client, dataset_id, rows, **params):
    response = client.post(f"/v1/datasets/{dataset_id}/records", params=params, json=rows)
    assert response.status_code == 202, response.text
    return response.json()


def test_a_push_answers_202_with_a_status_url(client):
    create_dataset(client, "t", COLUMNS, unique_key=["id"])
    answer = accepted(client, "t", [{"id": 1}])
    assert set(answer) == {"job_id", "status", "status_url"}
    assert answer["status"] in ("queued", "running", "succeeded")
    assert answer["status_url"].endswith(f"/v1/jobs/{answer['job_id']}")
    job = finished_job(client, answer["job_id"])
    assert client.get(answer["status_url"]).json()["id"] == job["id"]


def test_the_job_document_has_every_field(client):
    create_dataset(client, "t", COLUMNS, unique_key=["id"])
    job = push(client, "t", [{"id": 1, "v": "a"}], headers={"Idempotency-Key": "k1"})
    assert set(job) == {
        "id", "dataset_id", "method", "status", "phase", "progress", "created_at", "started_at",
        "finished_at", "duration_ms", "bytes", "source", "idempotency_key", "stats", "errors",
        "errors_total", "error", "outcome",
    }  # fmt: skip
    assert job["dataset_id"] == "t" and job["method"] == "upsert" and job["outcome"] == "complete"
    assert job["status"] == "succeeded" and job["progress"] == 100 and job["phase"] is None
    assert job["source"] == "v1" and job["idempotency_key"] == "k1"
    assert job["bytes"] == len(b'[{"id":1,"v":"a"}]')
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert job["duration_ms"] >= 0
    assert job["error"] is None and job["errors"] == [] and job["errors_total"] == 0


def test_wait_zero_answers_at_once_and_wait_n_returns_the_document(make_server):
    client = make_server(workers=0)  # nothing will run the job
    create_dataset(client, "t", COLUMNS)
    started = time.monotonic()
    response = client.post("/v1/datasets/t/records", params={"wait": 0.3}, json=[{"id": 1}])
    assert response.status_code == 202  # not done in time
    assert time.monotonic() - started >= 0.3
    assert client.get(f"/v1/jobs/{response.json()['job_id']}").json()["status"] == "queued"


def test_listing_jobs_newest_first_with_filters(client):
    create_dataset(client, "a", COLUMNS)
    create_dataset(client, "b", COLUMNS)
    first = push(client, "a", [{"id": 1}])
    second = push(client, "b", [{"id": 1}])
    bad = push(client, "a", b"[", content_type="application/json")
    jobs = client.get("/v1/jobs").json()["jobs"]
    assert [j["id"] for j in jobs] == [bad["id"], second["id"], first["id"]]
    assert [j["id"] for j in client.get("/v1/jobs", params={"dataset": "a"}).json()["jobs"]] == [
        bad["id"], first["id"],
    ]  # fmt: skip
    failed = client.get("/v1/jobs", params={"status": "failed"}).json()["jobs"]
    assert [j["id"] for j in failed] == [bad["id"]]
    assert client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]["id"] == bad["id"]
    assert client.get("/v1/jobs/job_nope").status_code == 404


def test_cancel_a_queued_job(make_server):
    client = make_server(workers=0)
    create_dataset(client, "t", COLUMNS)
    job_id = accepted(client, "t", [{"id": 1}])["job_id"]
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "job_not_cancellable"


def test_a_finished_job_cannot_be_cancelled(client):
    create_dataset(client, "t", COLUMNS)
    job = push(client, "t", [{"id": 1}])
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409


def test_cancelled_jobs_are_never_applied(store_settings):
    data = store_settings
    with make_client(data, workers=0) as client:
        create_dataset(client, "t", COLUMNS)
        keep = accepted(client, "t", [{"id": 1}])["job_id"]
        drop = accepted(client, "t", [{"id": 2}])["job_id"]
        assert client.post(f"/v1/jobs/{drop}/cancel").status_code == 200
    with make_client(data) as client:  # workers now run what is queued
        assert finished_job(client, keep)["status"] == "succeeded"
        assert client.get(f"/v1/jobs/{drop}").json()["status"] == "cancelled"
        assert rows_of(client, "t") == [{"id": 1, "v": None}]


def test_queued_jobs_survive_a_restart_and_run_in_order(store_settings):
    data = store_settings
    with make_client(data, workers=0) as client:
        create_dataset(client, "t", COLUMNS, unique_key=["id"])
        ids = [accepted(client, "t", [{"id": 1, "v": str(n)}])["job_id"] for n in range(5)]
    with make_client(data) as client:
        assert [finished_job(client, i)["status"] for i in ids] == ["succeeded"] * 5
        assert rows_of(client, "t") == [{"id": 1, "v": "4"}]


def test_an_idempotent_retry_is_applied_once(client):
    create_dataset(client, "t", COLUMNS)  # no key: a second apply would duplicate rows
    rows = [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]
    first = push(client, "t", rows, headers={"Idempotency-Key": "batch-1"})
    retry = push(client, "t", rows, headers={"Idempotency-Key": "batch-1"})
    assert retry["id"] == first["id"]
    assert len(rows_of(client, "t")) == 2
    assert len(client.get("/v1/jobs").json()["jobs"]) == 1


def test_concurrent_pushes_with_one_idempotency_key_make_one_job(client):
    create_dataset(client, "t", COLUMNS)  # no key: a second apply would duplicate rows
    rows = [{"id": n, "v": "x" * 100} for n in range(2000)]

    def send(_: int) -> str:
        headers = {"Idempotency-Key": "once"}
        response = client.post("/v1/datasets/t/records", json=rows, headers=headers)
        assert response.status_code in (200, 202), response.text  # 200: the job had finished
        answer = response.json()
        return answer.get("job_id") or answer["id"]

    with ThreadPoolExecutor(8) as pool:
        job_ids = set(pool.map(send, range(16)))
    assert len(job_ids) == 1
    assert finished_job(client, job_ids.pop())["stats"]["inserted"] == 2000
    assert len(client.get("/v1/jobs").json()["jobs"]) == 1
    assert len(rows_of(client, "t", limit=5000)) == 2000


def test_an_idempotency_key_with_another_payload_is_a_conflict(client):
    create_dataset(client, "t", COLUMNS)
    push(client, "t", [{"id": 1}], headers={"Idempotency-Key": "k"})
    response = client.post(
        "/v1/datasets/t/records", json=[{"id": 2}], headers={"Idempotency-Key": "k"}
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_conflict"
    assert rows_of(client, "t") == [{"id": 1, "v": None}]


def test_idempotency_keys_are_per_dataset(client):
    create_dataset(client, "a", COLUMNS)
    create_dataset(client, "b", COLUMNS)
    first = push(client, "a", [{"id": 1}], headers={"Idempotency-Key": "same"})
    other = push(client, "b", [{"id": 1}], headers={"Idempotency-Key": "same"})
    assert first["id"] != other["id"]


def test_a_job_on_a_dropped_dataset_fails(store_settings):
    data = store_settings
    with make_client(data, workers=0) as client:
        create_dataset(client, "t", COLUMNS)
        job_id = accepted(client, "t", [{"id": 1}])["job_id"]
        assert client.delete("/v1/datasets/t").status_code == 204
    with make_client(data) as client:
        job = finished_job(client, job_id)
        assert job["status"] == "failed" and job["error"]["code"] == "dataset_not_found"
